"""`train.compile`: decoder layers compiled in place train as eager ones do, with the same files, once compiled."""

from __future__ import annotations

import pytest
import torch
from accelerate.utils import DistributedType
from helpers import COMPILED_LOG_LINE, SMOOTH_ADAM, assert_trained_alike, recipe_for
from safetensors.torch import load_file

from wpo.errors import ConfigError
from wpo.training import layer_compile, reference_logps, trainer
from wpo.training.metrics import read_metrics


def test_the_decoder_layers_are_found_through_a_lora_wrapper(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert [type(layer).__name__ for layer in layer_compile.decoder_layers(model)] == ["LlamaDecoderLayer"] * 2
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert layer_compile.decoder_layers(wrapped) == list(model.model.layers)


def test_a_model_without_named_layers_is_refused_naming_the_key():
    with pytest.raises(
        ConfigError,
        match=r"Sequential names no decoder layer class .* for train.compile to compile: set train.compile: false",
    ):
        layer_compile.decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("launch", [DistributedType.DEEPSPEED, DistributedType.FSDP])
def test_sharded_launches_are_refused(tiny_llama, launch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with pytest.raises(ConfigError, match=rf"train.compile .* \({launch.value}\): set train.compile: false"):
        layer_compile.compile_decoder_layers(model, launch)
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)


@pytest.fixture
def dynamo_counters():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.mark.slow  # compiles a tiny model's layers, forward and backward (~30 s on 2 cores, inductor's cache empty)
@pytest.mark.parametrize("mode", ["full", "lora-checkpointed"])
def test_compiled_layers_train_as_eager_ones(
    tmp_path, tiny_llama, pairs_file, caplog, dynamo_counters, monkeypatch, mode
):
    """Same losses and weights (to float rounding), same files; the reference pass ran on the compiled layers (so
    step 1 sees z = 0) and its cache says so; a handful of graphs served both layers at every length."""
    reference_passes = []
    real_pass = reference_logps.compute_reference_logps

    def recording(model, *args, **kwargs):
        compiled = [layer._compiled_call_impl is not None for layer in layer_compile.decoder_layers(model)]
        reference_passes.append(all(compiled))
        return real_pass(model, *args, **kwargs)

    monkeypatch.setattr(reference_logps, "compute_reference_logps", recording)
    settings = ["train.max_steps=3", "train.warmup_ratio=0.0", *SMOOTH_ADAM]
    if mode == "lora-checkpointed":
        settings += ["model.lora={r: 4, alpha: 8, dropout: 0.0}", "train.gradient_checkpointing=true"]
    eager = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *settings, run="eager"))
    assert not dynamo_counters["stats"]
    with caplog.at_level("INFO", logger="wpo.training.trainer"):
        compiled = trainer.train(
            recipe_for(tmp_path, tiny_llama, pairs_file, *settings, "train.compile=true", run="compiled")
        )
    assert reference_passes == [False, True]
    caches = [
        {p.name for p in (tmp_path / run / "train" / "reference_cache").iterdir()} for run in ("eager", "compiled")
    ]
    assert caches[0] and caches[1] and caches[0] != caches[1]
    assert COMPILED_LOG_LINE in caplog.messages
    frames = dynamo_counters["frames"]
    assert frames["ok"] >= 1
    # transformers' output-capturing hooks cut a layer into 3 graphs, compiled once without gradient (the reference
    # pass) and once with: 6. A graph per layer and length (the reference pass and 3 steps x 2 micro-batches of various
    # lengths x 2 layers) would be dozens
    assert dynamo_counters["stats"]["unique_graphs"] <= 8, dict(dynamo_counters["stats"])

    curve = [row["loss"] for row in read_metrics(tmp_path / "compiled" / "train" / "metrics.jsonl")]
    expected = [row["loss"] for row in read_metrics(tmp_path / "eager" / "train" / "metrics.jsonl")]
    assert curve == pytest.approx(expected, rel=1e-4)
    first = read_metrics(tmp_path / "compiled" / "train" / "metrics.jsonl")[0]
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)  # the reference pass ran compiled too: z = 0
    weights = "adapter_model.safetensors" if mode == "lora-checkpointed" else "model.safetensors"
    initial = None if mode == "lora-checkpointed" else load_file(str(tiny_llama / "model.safetensors"))
    assert sorted(p.name for p in compiled.final_dir.iterdir()) == sorted(p.name for p in eager.final_dir.iterdir())
    assert_trained_alike(
        load_file(str(compiled.final_dir / weights)), load_file(str(eager.final_dir / weights)), initial, rel=1e-3
    )
