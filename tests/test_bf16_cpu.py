"""bf16 training on a CPU: the output layer's products in autocast's dtype, attention in fp32, each weight cast once a
step, the fused AdamW for bf16 only. Every check holds on any CPU: the inputs are exact in bf16 where a value is
compared, and the bf16 path runs without the units too (slowly, with the same numerics)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from helpers import recipe_for
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from wpo.training import auto_precision, cpu_attention, precision, trainer
from wpo.training.chunked_loss import chunked_sequence_statistics
from wpo.training.cpu_attention import sdpa_for_cpu_autocast
from wpo.training.loss import IGNORE_INDEX, sequence_statistics, soft_cap

BF16 = torch.bfloat16


def exact_batch():
    """Hidden states (multiples of 1/16), an output layer (multiples of 1/8) and a bias (multiples of 1/4), exact in
    bf16, whose products sum exactly in fp32: the logits are exact in fp32, and bf16 rounds them the same way on
    every CPU."""
    generator = torch.Generator().manual_seed(3)
    hidden = (torch.randint(-32, 33, (3, 5, 8), generator=generator) / 16).requires_grad_(True)
    weight = (torch.randint(-16, 17, (40, 8), generator=generator) / 8).requires_grad_(True)
    bias = (torch.randint(-8, 9, (40,), generator=generator) / 4).requires_grad_(True)
    labels = torch.randint(0, 40, (3, 5), generator=generator)
    labels[0, :2] = IGNORE_INDEX
    return hidden, weight, bias, labels


@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("chunk_size", [4, 64])  # backward: the vocabulary in four slices (4 x 40 // 13), or one
def test_the_chunked_loss_under_autocast_computes_as_the_models_output_layer_would(softcap, chunk_size):
    """Under bf16 autocast the logits are the bf16 ones autocast's linear gives (what `loss_chunk_size: 0` gets from
    the model), reduced in fp32; the fp32 logits would give other log-probs. Gradients, through both outputs and
    however the backward slices the vocabulary, match that path's to bf16 rounding, and come back fp32 like the
    masters."""
    hidden, weight, bias, labels = exact_batch()
    with torch.autocast("cpu", dtype=BF16):
        chunked = chunked_sequence_statistics(hidden, weight, bias, labels, softcap, chunk_size=chunk_size)
        model_logits = torch.nn.functional.linear(hidden, weight, bias)
    assert model_logits.dtype == BF16
    expected = sequence_statistics(soft_cap(model_logits.float(), softcap), labels)
    exact = torch.nn.functional.linear(hidden, weight, bias)
    assert torch.equal(model_logits.float(), exact.to(BF16).float())  # RNE of exact values: the same everywhere
    assert_close(chunked.logps, expected.logps, rtol=1e-5, atol=1e-5)
    assert_close(chunked.aligned_logps, expected.aligned_logps, rtol=1e-5, atol=1e-5)
    in_fp32 = sequence_statistics(soft_cap(exact, softcap), labels)
    assert (chunked.logps - in_fp32.logps).abs().max() > 1e-3  # the bf16 logits really were used

    def objective(stats):
        return stats.logps.sum() + 3.0 * stats.aligned_logps.sum()

    actual = torch.autograd.grad(objective(chunked), [hidden, weight, bias])
    reference = torch.autograd.grad(objective(expected), [hidden, weight, bias])
    assert [g.dtype for g in actual] == [torch.float32] * 3
    for a, r in zip(actual, reference, strict=True):
        assert_close(a, r, rtol=2**-6, atol=2**-6 * r.abs().max().item())


def test_the_chunked_loss_without_autocast_stays_fp32():
    hidden, weight, bias, labels = exact_batch()
    chunked = chunked_sequence_statistics(hidden, weight, bias, labels, None, chunk_size=4)
    expected = sequence_statistics(torch.nn.functional.linear(hidden, weight, bias), labels)
    assert_close(chunked.logps, expected.logps, rtol=1e-6, atol=1e-6)


def attention_inputs(length: int = 7):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 8, generator=generator).to(BF16) for _ in range(3))
    mask = torch.ones(length, length, dtype=torch.bool).tril().expand(2, 1, length, length)
    return SimpleNamespace(num_key_value_groups=1, is_causal=True), q, k, v, mask


def with_amx(monkeypatch, amx: bool) -> None:
    report = auto_precision.Bf16Support("cpu", amx=amx, avx512_bf16=True)
    monkeypatch.setattr(auto_precision, "this_machine", lambda: report)


@pytest.mark.parametrize("amx", [False, True])
def test_short_rows_attend_in_fp32_under_cpu_autocast_and_it_is_transformers_own_elsewhere(monkeypatch, amx):
    """PyTorch's CPU flash attention is slower in bf16 than in fp32 on short rows, so under CPU autocast their
    attention computes in fp32 (the very fp32 function on the upcast inputs); without autocast it is transformers'
    function as is."""
    with_amx(monkeypatch, amx)
    module, q, k, v, mask = attention_inputs()
    with torch.autocast("cpu", dtype=BF16):
        output, _ = sdpa_for_cpu_autocast(module, q, k, v, mask)
        in_bf16, _ = sdpa_attention_forward(module, q, k, v, mask)
    assert output.dtype == torch.float32 and in_bf16.dtype == BF16
    assert torch.equal(output, sdpa_attention_forward(module, q.float(), k.float(), v.float(), mask)[0])
    plain, _ = sdpa_for_cpu_autocast(module, q, k, v, mask)
    assert plain.dtype == BF16 and torch.equal(plain, sdpa_attention_forward(module, q, k, v, mask)[0])
    additive = torch.zeros(mask.shape, dtype=BF16).masked_fill(~mask, float("-inf"))  # an eager-style mask
    with torch.autocast("cpu", dtype=BF16):
        assert torch.equal(sdpa_for_cpu_autocast(module, q, k, v, additive)[0], output)


@pytest.mark.parametrize("amx, in_fp32", [(True, False), (False, True)])
def test_long_rows_attend_in_bf16_under_cpu_autocast_where_the_cpu_has_amx(monkeypatch, amx, in_fp32):
    """From BF16_ATTENTION_FROM tokens a row, the kernel runs faster in bf16 on a CPU with AMX: there the attention is
    transformers' own under autocast; without AMX it stays in fp32 (bf16 not measured faster there)."""
    with_amx(monkeypatch, amx)
    assert cpu_attention.attention_in_fp32(cpu_attention.BF16_ATTENTION_FROM - 1, amx=True)
    module, q, k, v, mask = attention_inputs(cpu_attention.BF16_ATTENTION_FROM)
    with torch.autocast("cpu", dtype=BF16):
        output, _ = sdpa_for_cpu_autocast(module, q, k, v, mask)
    expected = sdpa_attention_forward(module, *((q.float(), k.float(), v.float()) if in_fp32 else (q, k, v)), mask)
    assert output.dtype == (torch.float32 if in_fp32 else BF16)
    assert torch.equal(output, expected[0])


def test_the_reference_cache_key_records_how_attention_computes(monkeypatch):
    """A reference pass cached under one attention is not read under another: their log-probs differ in their last
    bits (`ReferencePass.attention`)."""
    with_amx(monkeypatch, True)
    with_units = cpu_attention.how_attention_computes("bf16", "cpu")
    with_amx(monkeypatch, False)
    without = cpu_attention.how_attention_computes("bf16", "cpu")
    assert with_units == "fp32 below 256 tokens a row, bf16 from there"
    assert without == "fp32"
    assert cpu_attention.how_attention_computes("no", "cpu") == "the model's own"
    assert cpu_attention.how_attention_computes("bf16", "cuda") == "the model's own"


class WeightCasts(TorchDispatchMode):
    """Counts the casts of one tensor's storage to bf16."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.pointer, self.count = weight.data_ptr(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == BF16:
            self.count += args[0].data_ptr() == self.pointer
        return func(*args, **kwargs)


def test_a_bf16_step_casts_each_weight_once_and_computes_attention_in_fp32(
    tmp_path, tiny_llama, pairs_file, monkeypatch
):
    """Two micro-batches, one autocast region: the step casts a layer's weight to bf16 once (its forwards share the
    cast, backward reuses it); the trainer routes attention through the fp32 function and steps a fused AdamW.
    fp32 keeps torch's default AdamW, so its results stay bit for bit."""
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", sdpa_attention_forward)  # restored after the test
    overrides = ("train.per_device_batch_size=1", "train.gradient_accumulation_steps=2", "train.max_steps=1")
    state = trainer.setup(recipe_for(tmp_path, tiny_llama, pairs_file, *overrides, "train.mixed_precision=bf16"))
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_for_cpu_autocast
    assert state.optimizer.defaults["fused"] is True
    weight = state.model.model.layers[0].self_attn.q_proj.weight
    with WeightCasts(weight) as casts:
        trainer.train_step(state, 0)
    assert casts.count == 1

    fp32 = trainer.setup(recipe_for(tmp_path, tiny_llama, pairs_file, *overrides, run="fp32"))
    assert not fp32.optimizer.defaults["fused"]


@pytest.mark.parametrize(
    ("mixed_precision", "launch", "fused"),
    [
        ("bf16", DistributedType.NO, True),
        ("bf16", DistributedType.MULTI_CPU, True),
        ("bf16", DistributedType.FSDP, False),
        ("bf16", DistributedType.DEEPSPEED, False),
        ("no", DistributedType.NO, False),
    ],
)
def test_the_fused_adamw_is_for_bf16_on_unsharded_launches(mixed_precision, launch, fused, tmp_path, tiny_llama):
    from wpo.config import TrainConfig

    accelerator = SimpleNamespace(mixed_precision=mixed_precision, distributed_type=launch)
    model = torch.nn.Linear(3, 3)
    optimizer = trainer.masters_and_optimizer(model, TrainConfig(), accelerator, resuming=False)
    assert bool(optimizer.defaults["fused"]) is fused
