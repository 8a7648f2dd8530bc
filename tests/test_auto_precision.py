"""`train.mixed_precision: auto` decides from the bf16 units the device reports, substituted here so that no test
depends on the CPU it runs on, logs its reason once, and is then exactly the value it resolved to."""

from __future__ import annotations

import logging

import pytest
from helpers import recipe_for

from wpo.config import config_hash
from wpo.training import auto_precision, precision, trainer
from wpo.training.auto_precision import Bf16Support, auto_mixed_precision
from wpo.training.metrics import read_metrics

AMX = Bf16Support("cpu", amx=True, avx512_bf16=True)  # Sapphire Rapids and later
AVX512_BF16 = Bf16Support("cpu", avx512_bf16=True)  # e.g. AMD Zen 4
AVX2_ONLY = Bf16Support("cpu")


@pytest.mark.parametrize(
    ("support", "expected"),
    [
        (AMX, ("bf16", "this CPU has AMX bf16 units")),
        (AVX512_BF16, ("bf16", "this CPU has AVX512-BF16 units")),
        (AVX2_ONLY, ("no", "this CPU has no bf16 units (AMX or AVX512-BF16): fp32 is faster")),
        (Bf16Support("cuda", accelerator_bf16=True), ("bf16", "this cuda device supports bf16")),
        (Bf16Support("cuda"), ("no", "this cuda device does not support bf16")),
    ],
    ids=["amx", "avx512-bf16", "avx2-only", "gpu-bf16", "gpu-without"],
)
def test_auto_decides_from_the_reported_units(support, expected):
    assert auto_mixed_precision(support) == expected


@pytest.mark.parametrize(("support", "expected"), [(AMX, "bf16"), (AVX512_BF16, "bf16"), (AVX2_ONLY, "no")])
def test_auto_is_logged_once_with_its_reason_and_computes_as_its_value(monkeypatch, caplog, support, expected):
    """One line with the reason, then the resolved value as if written (no launcher precision set here)."""
    monkeypatch.setattr(auto_precision, "this_machine", lambda: support)
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: support.amx or support.avx512_bf16)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    with caplog.at_level(logging.INFO, logger="wpo.training"):
        assert precision.compute_precision("auto", on_cpu=True) == expected
    reason = auto_mixed_precision(support)[1]
    assert [m for m in caplog.messages if "auto" in m] == [f"train.mixed_precision: auto -> {expected} ({reason})"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wpo.training"):
        assert precision.compute_precision(expected, on_cpu=True) == expected
    assert not caplog.messages  # the written value: nothing to explain


@pytest.mark.parametrize(("support", "resolved", "other"), [(AMX, "bf16", "no"), (AVX2_ONLY, "no", "bf16")])
def test_the_run_config_hashes_what_auto_resolves_to(
    tmp_path, tiny_llama, pairs_file, monkeypatch, support, resolved, other
):
    """Checkpoints and the stage manifest are keyed by the run config: `auto` and its value are one run."""
    monkeypatch.setattr(auto_precision, "this_machine", lambda: support)

    def run_hash(value: str) -> str:
        config = trainer.run_config(recipe_for(tmp_path, tiny_llama, pairs_file, f"train.mixed_precision={value}"))
        return config_hash(config)

    assert run_hash("auto") == run_hash(resolved) != run_hash(other)


def test_a_run_under_auto_resolving_to_no_resumes_the_fp32_run_bit_for_bit(
    tmp_path, tiny_llama, pairs_file, monkeypatch
):
    """On a CPU without bf16 units `auto` is `no`: it finds the fp32 run's checkpoint as its own, and computes the
    same losses as fp32, bit for bit."""
    monkeypatch.setattr(auto_precision, "this_machine", lambda: AVX2_ONLY)
    common = ("train.max_steps=2", "train.logging_steps=1")
    fp32 = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, "train.mixed_precision=no"))
    resumed = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, "train.mixed_precision=auto"))
    assert (fp32.counts["resumed_from_step"], resumed.counts["resumed_from_step"]) == (0, 2)
    fresh = trainer.train(
        recipe_for(tmp_path, tiny_llama, pairs_file, *common, "train.mixed_precision=auto", run="auto")
    )
    assert fresh.counts["resumed_from_step"] == 0
    losses = [
        [row["loss"] for row in read_metrics(tmp_path / run / "train" / "metrics.jsonl")] for run in ("run", "auto")
    ]
    assert losses[0] == losses[1]
