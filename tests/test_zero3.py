"""DeepSpeed ZeRO-3 through `accelerate launch --config_file recipes/accelerate/zero3.yaml` (2 processes, DeepSpeed's
CPU accelerator over gloo) trains what one process trains, writes the same checkpoints, keeps fp32 master weights
under bf16 compute, and resumes — under ZeRO-3 or under plain data parallel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    DISTRIBUTED_ENV,
    PAIRS,
    assert_ok,
    assert_trained_alike,
    free_port,
    pair_record,
    run_wpo,
    train_recipe,
    two_rounds_of_lora_and_eval,
    write_lines,
)
from safetensors.torch import load_file
from torch.testing import assert_close

from wpo.config import load_recipe
from wpo.errors import ConfigError
from wpo.training import zero
from wpo.training.metrics import read_metrics

ZERO3 = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "zero3.yaml"
LORA = "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}"


def zero3(
    recipe: Path, *overrides: str, mixed_precision: str = "no", stage: str = "train"
) -> subprocess.CompletedProcess:
    """`accelerate launch` with the shipped ZeRO-3 config, on 2 processes (fp32 unless told: exact comparisons)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ZERO3),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        mixed_precision,
        "-m",
        "wpo",
        stage,
        str(recipe),
        *overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=DISTRIBUTED_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def zero3_training(tmp_path: Path, model: Path, learning_rate: float = 1.0e-2, adam_epsilon: float = 0.1) -> Path:
    """By default with helpers.SMOOTH_ADAM's settings, so runs of other layouts train weights that compare well."""
    return train_recipe(
        tmp_path / "train.yaml",
        model,
        seed=4,
        stages=None,
        max_steps=3,
        per_device_batch_size=1,
        learning_rate=learning_rate,
        adam_epsilon=adam_epsilon,
        lr_scheduler="linear",
        warmup_ratio=0,
        max_length=64,
        max_prompt_length=32,
        logging_steps=1,
        save_steps=1,
        loss_chunk_size=8,
    )


def pairs_in(directory: Path) -> str:
    """Pairs in a directory of their own, so each run computes (and caches) its own reference log-probs."""
    directory.mkdir(parents=True)
    write_lines(directory / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])
    return f"train.pairs={directory / 'pairs.jsonl'}"


def weights(run: Path, directory: str, file: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run / "train" / directory / file)


def assert_same_tensors(actual: dict, expected: dict, tolerance: float, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for name, tensor in expected.items():
        assert_close(actual[name], tensor, rtol=tolerance, atol=tolerance, msg=f"{what}: {name}")


def stop_after_step_2(run: Path) -> None:
    """As if the run was killed right after writing its step-2 checkpoint."""
    for stale in ("checkpoint-3", "final", "manifest.json"):
        path = run / "train" / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.slow  # launches processes
def test_zero3_trains_and_checkpoints_what_one_process_does_and_resumes_without_deepspeed(tmp_path, tiny_llama):
    """The reference pass runs on the whole model (not ZeRO-3's partitions: accelerate would have transformers
    partition it while loading), the chunked loss runs on the partitioned output layer, and the checkpoint holds
    whole fp32 weights and Adam state by parameter name — which plain data parallel resumes from."""
    recipe = zero3_training(tmp_path, tiny_llama)
    one, two = tmp_path / "one", tmp_path / "two"
    assert_ok(
        run_wpo(
            "train",
            recipe,
            f"output_dir={one}",
            pairs_in(tmp_path / "pairs-one"),
            "train.per_device_batch_size=2",
            env=DISTRIBUTED_ENV,
        )
    )
    launched = zero3(recipe, f"output_dir={two}", pairs_in(tmp_path / "pairs-two"), "train.per_device_batch_size=1")

    assert "accelerate: DEEPSPEED, 2 process(es)" in launched.stderr
    assert launched.stdout.count("wpo train") == 1  # the summary, from the main process only
    assert "deepspeed: ZeRO-3, fp32, micro-batch 1, accumulation 1, clipping 1.0 (from the recipe)" in launched.stderr
    assert "reference log-probs: computed 6 pairs on 2 process(es)" in launched.stderr
    (one_cache,), (two_cache,) = ((run / "train" / "reference_cache").glob("*") for run in (one, two))
    assert_same_tensors(load_file(two_cache), load_file(one_cache), 1e-6, "reference log-probs")
    for a, b in zip(
        read_metrics(one / "train" / "metrics.jsonl"), read_metrics(two / "train" / "metrics.jsonl"), strict=True
    ):
        for key in ("loss", "weight_mean", "reward_margin", "grad_norm", "learning_rate"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    initial = load_file(tiny_llama / "model.safetensors")
    for directory in ("checkpoint-2/model", "final"):
        assert_trained_alike(weights(two, directory), weights(one, directory), initial, directory)
        assert {tensor.dtype for tensor in weights(two, directory).values()} == {torch.float32}
    one_adam, two_adam = (weights(run, "checkpoint-2", "optimizer.safetensors") for run in (one, two))
    assert "model.layers.0.mlp.up_proj.weight.exp_avg_sq" in two_adam
    assert_same_tensors(two_adam, one_adam, 1e-6, "Adam state")
    one_state, two_state = (
        json.loads((run / "train" / "checkpoint-2" / "trainer_state.json").read_text()) for run in (one, two)
    )
    assert two_state["optimizer"] == one_state["optimizer"]  # groups: names, weight decay, lr, betas, ...

    uninterrupted = weights(two, "final")
    stop_after_step_2(two)
    resumed = assert_ok(
        run_wpo(
            "train",
            recipe,
            f"output_dir={two}",
            f"train.pairs={tmp_path / 'pairs-two' / 'pairs.jsonl'}",
            "train.per_device_batch_size=1",
            processes=2,
            env=DISTRIBUTED_ENV,
        )
    )
    assert "accelerate: MULTI_CPU" in resumed.stderr and "(step 2)" in resumed.stderr
    assert_trained_alike(weights(two, "final"), uninterrupted, initial, "resumed without DeepSpeed")


@pytest.mark.slow  # launches processes
def with_ties_rounded(name: str, weight: torch.Tensor) -> torch.Tensor:
    """Where `train.bf16_ties: round` starts a linear layer's weight: the few exactly halfway between two bf16 values
    (random fp32 weights: about 1 in 65 536) rounded as the bf16 forward rounds them, every other one as loaded."""
    if not name.endswith("proj.weight"):
        return weight
    from wpo.training.precision import on_bf16_tie

    return torch.where(on_bf16_tie(weight), weight.to(torch.bfloat16).float(), weight)


def test_zero3_in_bf16_keeps_fp32_masters_and_resumes_to_the_same_weights(tmp_path, tiny_llama):
    """DeepSpeed builds its fp32 masters from its bf16 copy of the weights; wpo puts the loaded fp32 weights back,
    so three steps of learning rate 1e-6 (linear decay: 1e-6, 6.7e-7, 3.3e-7) move a weight by about 2e-6 (an Adam
    step is about the learning rate); from the bf16-rounded base the change is 2.5e-4 (measured). A resume restores
    the masters and Adam state exactly. Also: accumulation (2 micro-batches per process) under the engine."""
    recipe = zero3_training(tmp_path, tiny_llama, learning_rate=1.0e-6, adam_epsilon=1.0e-8)
    run = tmp_path / "run"
    overrides = (
        f"output_dir={run}",
        pairs_in(tmp_path / "pairs"),
        "train.per_device_batch_size=1",
        "train.gradient_accumulation_steps=2",
    )
    launched = zero3(recipe, *overrides, mixed_precision="bf16")
    assert "deepspeed: ZeRO-3, bf16 compute over fp32 masters, micro-batch 1, accumulation 2" in launched.stderr
    assert "schedule: 3 steps of 4 pairs (1 per device x 2 accumulation x 2 processes)" in launched.stderr
    uninterrupted, base = weights(run, "final"), load_file(tiny_llama / "model.safetensors")
    moved = max(
        (uninterrupted[name] - with_ties_rounded(name, base[name])).abs().max().item() for name in uninterrupted
    )
    assert 1e-6 < moved < 4e-6
    assert {tensor.dtype for tensor in uninterrupted.values()} == {torch.float32}

    stop_after_step_2(run)
    resumed = zero3(recipe, *overrides, mixed_precision="bf16")
    assert "(step 2)" in resumed.stderr
    assert_same_tensors(weights(run, "final"), uninterrupted, 0.0, "resumed under ZeRO-3")


@pytest.mark.slow  # launches processes
def test_lora_under_zero3_trains_the_adapter_one_process_trains(tmp_path, tiny_llama):
    recipe = zero3_training(tmp_path, tiny_llama)
    one, two = tmp_path / "one", tmp_path / "two"
    assert_ok(
        run_wpo(
            "train",
            recipe,
            f"output_dir={one}",
            pairs_in(tmp_path / "pairs-one"),
            "train.per_device_batch_size=2",
            LORA,
            env=DISTRIBUTED_ENV,
        )
    )
    zero3(recipe, f"output_dir={two}", pairs_in(tmp_path / "pairs-two"), "train.per_device_batch_size=1", LORA)
    for directory in ("checkpoint-2/model", "final"):
        adapter = weights(two, directory, "adapter_model.safetensors")
        assert len(adapter) == 8  # lora_A and lora_B of q_proj and v_proj in 2 layers: the adapter alone
        assert_trained_alike(adapter, weights(one, directory, "adapter_model.safetensors"), None, directory)
    one_adam, two_adam = (weights(run, "checkpoint-2", "optimizer.safetensors") for run in (one, two))
    assert_same_tensors(two_adam, one_adam, 1e-6, "Adam state")


@pytest.mark.slow  # launches processes
def test_wpo_run_under_zero3_goes_through_two_rounds_and_eval(tmp_path, tiny_llama):
    """Once the trainer has made its Accelerator, the processes still load models whole: round 2's LoRA merge (the
    main process alone) and sampling would otherwise partition the weights while loading and wait for each other."""
    run = tmp_path / "run"
    launched = zero3(
        two_rounds_of_lora_and_eval(tmp_path, tiny_llama),
        f"output_dir={run}",
        "train.per_device_batch_size=1",
        stage="run",
    )
    assert launched.stderr.count("accelerate: DEEPSPEED, 2 process(es)") == 4  # both processes, both rounds
    assert "run: process 1 is done; the main process goes on with ['eval']" in launched.stderr
    for trained in (run / "train", run / "round-2" / "train"):
        assert json.loads((trained / "manifest.json").read_text())["counts"]["num_processes"] == 2
    assert "win_rate" in json.loads((run / "summary.json").read_text())


def plugin_accelerator(**plugin_options):
    """The part of an Accelerator `zero.configure` reads and writes, holding a real DeepSpeedPlugin."""
    from accelerate.utils import DeepSpeedPlugin

    return SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=DeepSpeedPlugin(**plugin_options)), gradient_accumulation_steps=1
    )


def test_configure_writes_the_recipe_into_the_engine_config(tmp_path):
    recipe = load_recipe(
        None, ["train.per_device_batch_size=2", "train.gradient_accumulation_steps=4", "train.max_grad_norm=0.5"]
    )
    accelerator = plugin_accelerator(zero_stage=3, zero3_init_flag=False)
    zero.configure(accelerator, recipe.train, pairs_per_step=16)
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    assert (
        config["train_micro_batch_size_per_gpu"],
        config["gradient_accumulation_steps"],
        config["train_batch_size"],
        config["gradient_clipping"],
    ) == (2, 4, 16, 0.5)
    assert accelerator.gradient_accumulation_steps == 4


@pytest.mark.parametrize(
    ("plugin_options", "message"),
    [
        ({"zero_stage": 2}, "ZeRO stage 2 is not supported: use ZeRO-3"),
        ({"zero_stage": 3, "zero3_init_flag": True}, "set zero3_init_flag: false"),
        ({"zero_stage": 3, "offload_optimizer_device": "cpu"}, "offload_optimizer is not supported"),
        (
            {"hf_ds_config": {"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": 8}},
            "sets gradient_accumulation_steps: 8, but the recipe gives 1",
        ),
        (
            {"hf_ds_config": {"zero_optimization": {"stage": 3}, "optimizer": {"type": "Adam"}}},
            "names an optimizer or scheduler",
        ),
        ({"hf_ds_config": {"zero_optimization": {"stage": 3}, "fp16": {"enabled": True}}}, "use mixed_precision bf16"),
    ],
)
def test_configure_refuses_what_the_trainer_does_not_drive(plugin_options, message):
    """(accelerate turns zero3_init_flag on by default for ZeRO-3: these cases turn it off, but for its own.)"""
    with pytest.raises(ConfigError, match=message):
        zero.configure(
            plugin_accelerator(**{"zero3_init_flag": False, **plugin_options}),
            load_recipe(None, []).train,
            pairs_per_step=1,
        )


def test_a_deepspeed_launch_without_deepspeed_installed_says_how_to_get_it(monkeypatch):
    import importlib.util

    from wpo import distributed
    from wpo.errors import MachineLacks

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(MachineLacks) as raised:
        distributed.state_options()
    assert raised.value.lacks == ["deepspeed (a DeepSpeed launch): pip install 'wpo[deepspeed]'"]
