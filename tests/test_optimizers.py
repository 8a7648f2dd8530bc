"""Memory options of full fine-tuning (optimizer in backward, 8-bit AdamW moments) and bf16 masters on the grid."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import cli, machine_lacks, recipe_for, save_tiny_model, train_killed_at
from safetensors.torch import load_file
from torch.testing import assert_close

from wpo.errors import ConfigError
from wpo.training import precision, trainer
from wpo.training.metrics import read_metrics
from wpo.training.precision import bf16_grid_counts, on_bf16_tie, round_bf16_ties

NO_CLIPPING = ("train.max_grad_norm=null", "train.max_steps=4", "train.save_steps=2", "train.save_total_limit=null")


def final_weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.final_dir / "model.safetensors"))


def losses(tmp_path, run: str) -> list[float]:
    return [row["loss"] for row in read_metrics(tmp_path / run / "train" / "metrics.jsonl")]


def test_bf16_ties_are_counted_and_rounded_away():
    """bf16 keeps 8 significant bits: next to 1.0 its values are 2^-7 apart, so 1 + 2^-8 is a tie (rounded to even,
    1.0). On a tie an update of 1e-6 flips what the bf16 forward sees by a whole 2^-7; rounded, it changes nothing
    until it adds up to half that. Weights off a tie keep their value."""
    weights = torch.tensor([1.0, 1.0 + 2**-8, 1.0 + 2**-10, 0.5 + 2**-9])
    assert bf16_grid_counts([weights]) == (4, 2, 1)  # 1 + 2^-8 and 0.5 + 2^-9 are ties; 1.0 is on the grid
    nudged = (weights + 1e-6).to(torch.bfloat16).float()
    assert nudged[1].item() == 1.0 + 2**-7  # the tie flipped up a whole ulp
    layer = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weights)
    assert round_bf16_ties(layer) == (4, 2)
    assert layer.weight.dtype == torch.float32
    assert layer.weight.tolist()[0] == [1.0, 1.0, 1.0 + 2**-10, 0.5]  # ties: what .to(bfloat16) gave the forward
    assert bf16_grid_counts([layer.weight]) == (4, 0, 3)
    moved = (layer.weight + 1e-6).to(torch.bfloat16)
    assert torch.equal(moved, layer.weight.to(torch.bfloat16))
    frozen = torch.nn.Linear(4, 1, bias=False).requires_grad_(False)
    assert round_bf16_ties(frozen) == (0, 0)  # frozen (a LoRA base) weights are not the masters


@pytest.fixture(scope="module")
def tiny_llama_with_ties(tmp_path_factory):
    """The tiny llama with every weight rounded to fp16, as weights converted from fp16 or a GGUF are: some sit
    exactly halfway between two bf16 values."""
    from transformers import AutoModelForCausalLM

    directory = save_tiny_model(tmp_path_factory.mktemp("tiny-llama-fp16"), "llama", seed=0)
    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    model.save_pretrained(directory, safe_serialization=True)
    total, ties, _ = bf16_grid_counts(model.parameters())
    assert ties > total // 20
    return directory


def test_bf16_training_rounds_the_ties_and_keeps_every_other_weight(
    tmp_path, tiny_llama_with_ties, pairs_file, caplog, monkeypatch
):
    """Under bf16 (the units assumed, so the path runs on any CPU) the linear layers' tie weights are rounded as the
    forward rounds them: the first step computes exactly what `keep` computes, and a learning rate far below half a
    bf16 ulp leaves what the forward sees unchanged, where `keep` lets the same tiny update flip the ties. Every other
    weight starts as loaded; fp32 training is untouched by the setting."""
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    common = ("train.mixed_precision=bf16", "train.learning_rate=1e-7", "train.warmup_ratio=0", "train.max_steps=2")
    with caplog.at_level(logging.INFO, logger="wpo.training"):
        rounded_run = trainer.train(recipe_for(tmp_path, tiny_llama_with_ties, pairs_file, *common, run="round"))
    assert "sat exactly halfway between two bf16 values, where any update flips the forward's rounding" in caplog.text
    kept = trainer.train(
        recipe_for(tmp_path, tiny_llama_with_ties, pairs_file, *common, "train.bf16_ties=keep", run="keep")
    )
    first = [read_metrics(tmp_path / run / "train" / "metrics.jsonl")[0] for run in ("round", "keep")]
    assert first[0]["loss"] == first[1]["loss"] and first[0]["logps_chosen"] == first[1]["logps_chosen"]
    original = load_file(str(tiny_llama_with_ties / "model.safetensors"))
    linear = [name for name in original if name.endswith("proj.weight")]
    assert len(linear) == 14  # 2 layers x q k v o gate up down
    flipped = 0
    for name in linear:
        start, round_end, keep_end = original[name], final_weights(rounded_run)[name], final_weights(kept)[name]
        ties = on_bf16_tie(start)
        rounded = start.to(torch.bfloat16)
        settled = torch.where(ties, rounded.float(), start)
        assert (round_end - settled).abs().max() < 2.1e-7, name  # from the rounded ties, two steps of at most lr
        assert (keep_end - start).abs().max() < 2.1e-7, name  # from the loaded values
        big = start.abs() > 1e-3  # an eighth of an ulp > 2e-7: two steps of 1e-7 cross no boundary off a tie
        assert torch.equal(round_end[big].to(torch.bfloat16), rounded[big]), name
        flipped += int((keep_end[big].to(torch.bfloat16) != rounded[big]).sum())
    for name in set(original) - set(linear):  # embeddings and norms: the forward uses them in fp32
        assert (final_weights(rounded_run)[name] - original[name]).abs().max() < 2.1e-7, name
    ties = bf16_grid_counts(original[name] for name in linear)[1]
    assert flipped > ties // 4, (flipped, ties)  # kept, the same tiny steps flip what the forward sees
    fp32 = trainer.train(recipe_for(tmp_path, tiny_llama_with_ties, pairs_file, "train.max_steps=1", run="fp32"))
    assert bf16_grid_counts(final_weights(fp32).values())[1] > 0  # no rounding without bf16 compute


def interrupted_then_resumed(tmp_path, tiny_llama, pairs_file, monkeypatch, *overrides):
    """The run killed during step 3 (after the step-2 checkpoint), then resumed to its end."""
    train_killed_at(
        monkeypatch, recipe_for(tmp_path, tiny_llama, pairs_file, *NO_CLIPPING, *overrides, run="resumed"), 2
    )
    resumed = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *NO_CLIPPING, *overrides, run="resumed"))
    assert resumed.counts["resumed_from_step"] == 2 and resumed.steps == 4
    return resumed


def test_optimizer_in_backward_trains_as_a_step_after_backward(tmp_path, tiny_llama, pairs_file, monkeypatch):
    """Stepping each parameter inside backward gives the weights, losses and AdamW state of the usual step after
    backward (same arithmetic, one parameter at a time), and its checkpoints resume like any other."""
    plain = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *NO_CLIPPING, run="plain"))
    hooked = trainer.train(
        recipe_for(tmp_path, tiny_llama, pairs_file, *NO_CLIPPING, "train.optimizer_in_backward=true", run="hooked")
    )
    assert losses(tmp_path, "hooked") == pytest.approx(losses(tmp_path, "plain"), rel=1e-6)
    start = load_file(str(tiny_llama / "model.safetensors"))
    for name, weight in final_weights(plain).items():
        assert not torch.equal(weight, start[name]) or name.endswith("norm.weight")
        assert_close(final_weights(hooked)[name], weight, rtol=0, atol=1e-7)
    optimizer = [
        load_file(str(tmp_path / run / "train" / "checkpoint-2" / "optimizer.safetensors"))
        for run in ("plain", "hooked")
    ]
    assert optimizer[0].keys() == optimizer[1].keys()
    for key, value in optimizer[0].items():
        assert_close(optimizer[1][key], value, rtol=0, atol=1e-7)

    resumed = interrupted_then_resumed(
        tmp_path, tiny_llama, pairs_file, monkeypatch, "train.optimizer_in_backward=true"
    )
    for name, weight in final_weights(hooked).items():
        assert torch.equal(final_weights(resumed)[name], weight), name


def test_a_bf16_run_under_auto_resumes_bit_for_bit(tmp_path, tiny_llama, pairs_file, monkeypatch):
    """`train.mixed_precision: auto` on a CPU reporting AMX (substituted, so this runs the bf16 path on any CPU): a run
    killed after its step-2 checkpoint resumes to the uninterrupted run's losses and weights exactly, the fused
    AdamW's state and the bf16 casts included."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from wpo.training import auto_precision

    monkeypatch.setattr(auto_precision, "this_machine", lambda: auto_precision.Bf16Support("cpu", amx=True))
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", sdpa_attention_forward)  # restored after the test
    auto = "train.mixed_precision=auto"
    straight = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *NO_CLIPPING, auto, run="straight"))
    resumed = interrupted_then_resumed(tmp_path, tiny_llama, pairs_file, monkeypatch, auto)
    assert (
        json.loads((tmp_path / "resumed" / "train" / "manifest.json").read_text())["config"]["train"]["mixed_precision"]
        == "bf16"
    )
    assert losses(tmp_path, "resumed") == losses(tmp_path, "straight")
    for name, weight in final_weights(straight).items():
        assert torch.equal(final_weights(resumed)[name], weight), name


@pytest.fixture(scope="module")
def wider_tiny_llama(tiny_llama, tmp_path_factory):
    """The tiny llama's tokenizer on a body wide enough (hidden 64, MLP 128) that bitsandbytes keeps every matrix's
    moments in 8 bits (it does from 4096 elements), with the code maps those share."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("wider-tiny-llama")
    for item in tiny_llama.iterdir():
        if "token" in item.name or item.name.endswith(".jinja"):
            shutil.copy(item, directory)
    config = AutoConfig.from_pretrained(tiny_llama)
    config.hidden_size, config.intermediate_size = 64, 128
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    return directory


def test_adamw_8bit_keeps_moments_in_8_bits_and_resumes_exactly(tmp_path, wider_tiny_llama, pairs_file, monkeypatch):
    """bitsandbytes' AdamW8bit on the CPU: every matrix's moments are saved as uint8 codes with their block scales,
    a resume from the step-2 checkpoint ends on the uninterrupted run's weights bit for bit, and the losses follow
    plain AdamW's closely (4 steps at lr 1e-3 on a tiny model)."""
    eight = ("train.optimizer=adamw_8bit", *NO_CLIPPING)
    whole = trainer.train(recipe_for(tmp_path, wider_tiny_llama, pairs_file, *eight, run="whole"))
    saved = load_file(str(tmp_path / "whole" / "train" / "checkpoint-2" / "optimizer.safetensors"))
    codes = [key for key, value in saved.items() if value.dtype == torch.uint8]
    assert any("embed_tokens" in key for key in codes) and sum("mlp" in key for key in codes) >= 4, sorted(saved)
    resumed = interrupted_then_resumed(
        tmp_path, wider_tiny_llama, pairs_file, monkeypatch, "train.optimizer=adamw_8bit"
    )
    for name, weight in final_weights(whole).items():
        assert torch.equal(final_weights(resumed)[name], weight), name
    trainer.train(recipe_for(tmp_path, wider_tiny_llama, pairs_file, *NO_CLIPPING, run="adamw"))
    assert losses(tmp_path, "whole") == pytest.approx(losses(tmp_path, "adamw"), rel=0.02)
    assert losses(tmp_path, "whole")[-1] != losses(tmp_path, "adamw")[-1]  # really another optimizer


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.optimizer_in_backward=true"],
            "train.optimizer_in_backward steps each parameter before the others have gradients, so there is no global "
            "norm to clip: set train.max_grad_norm: null (it is 1.0)",
        ),
        (
            ["train.optimizer_in_backward=true", "train.max_grad_norm=null", "train.gradient_accumulation_steps=2"],
            "train.optimizer_in_backward steps at every backward: it needs train.gradient_accumulation_steps: 1 (it is "
            "2); raise train.per_device_batch_size instead",
        ),
    ],
)
def test_optimizer_in_backward_refuses_what_it_cannot_do(tmp_path, tiny_llama, pairs_file, overrides, message):
    with pytest.raises(ConfigError, match="train.optimizer_in_backward") as caught:
        recipe_for(tmp_path, tiny_llama, pairs_file, *overrides)
    assert message in str(caught.value)


def test_adamw_8bit_without_bitsandbytes_is_what_this_machine_lacks(tmp_path, tiny_llama, pairs_file, monkeypatch):
    """Said at load by `wpo config` (exit 3, the recipe printed), and by the optimizer itself with the same line."""
    import importlib.util

    from wpo.config import load_recipe
    from wpo.errors import MachineLacks
    from wpo.training.optimizers import build_optimizer

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'run'}\nmodel: {{name_or_path: {tiny_llama}}}\nstages: [train]\n"
        f"train: {{pairs: {pairs_file}, optimizer: adamw_8bit}}\n"
    )
    lack = "bitsandbytes (train.optimizer: adamw_8bit): pip install 'wpo[lowbit]', or set train.optimizer: adamw"
    config = cli("config", recipe)
    assert machine_lacks(config) == [lack] and "optimizer: adamw_8bit" in config.stdout
    assert not (tmp_path / "run").exists()
    with pytest.raises(MachineLacks) as raised:
        build_optimizer(torch.nn.Linear(2, 2), load_recipe(recipe).train)
    assert raised.value.lacks == [lack]
