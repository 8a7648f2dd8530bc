"""The reference log-probs cache: keyed by what determines the log-probs, so runs that differ only in what acts after
them (beta, the loss, the learning rate, the seed) share one reference pass through `train.reference_cache_dir`,
and a run computes the same losses whether it read the pass or made it."""

from __future__ import annotations

import json
import logging

from helpers import recipe_for

from wpo.training import trainer
from wpo.training.metrics import read_metrics

TIMINGS = ("tokens_per_second", "step_seconds")


def losses(run_dir):
    return [
        {k: v for k, v in row.items() if k not in TIMINGS} for row in read_metrics(run_dir / "train" / "metrics.jsonl")
    ]


def test_runs_that_differ_after_the_log_probs_share_one_reference_pass(tmp_path, tiny_llama, pairs_file, caplog):
    shared = tmp_path / "shared"
    cache = f"train.reference_cache_dir={shared}"
    with caplog.at_level(logging.INFO, logger="wpo.training"):
        first = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=2", cache, run="beta-0.1"))
        others = [
            trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=2", cache, setting, run=name))
            for name, setting in [
                ("beta-0.5", "train.beta=0.5"),
                ("ipo", "train.loss=ipo"),
                ("lr", "train.learning_rate=1e-4"),
                ("seed", "seed=4"),
            ]
        ]
    assert first.reference_from_cache is False and all(run.reference_from_cache for run in others)
    passes = [message for message in caplog.messages if message.startswith("reference log-probs: computed")]
    assert len(passes) == 1
    (cache_file,) = shared.glob("*")  # one file, nothing half-written left beside it
    for run in ("beta-0.1", "beta-0.5", "ipo", "lr", "seed"):
        manifest = json.loads((tmp_path / run / "train" / "manifest.json").read_text())
        assert manifest["reference_cache"] == str(cache_file)
        assert not (tmp_path / run / "train" / "reference_cache").exists()  # never inside the run's own directory

    alone = trainer.train(
        recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=2", "train.beta=0.5", run="alone")
    )
    assert alone.reference_from_cache is False
    assert (tmp_path / "alone" / "train" / "reference_cache").is_dir()  # unset: the run's own cache, as before
    assert losses(tmp_path / "beta-0.5") == losses(tmp_path / "alone")  # the shared pass changes no bit


def test_what_changes_the_token_ids_or_the_computation_computes_afresh(tmp_path, tiny_llama, pairs_file):
    """max_length is in the key through the tokens it leaves: one that cuts nothing more reads the same pass, one
    that cuts the answers computes another. The batch layout, which rounds padded rows differently, does too."""
    cache = f"train.reference_cache_dir={tmp_path / 'shared'}"

    def train(*settings: str, run: str):
        return trainer.train(
            recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=1", cache, *settings, run=run)
        )

    base = train(run="base")
    longer = train("train.max_length=200", run="longer")
    shorter = train("train.max_length=24", "train.max_prompt_length=12", run="shorter")
    batched = train("train.per_device_batch_size=3", run="batched")
    assert base.counts["truncated_responses"] == longer.counts["truncated_responses"] == 0
    assert shorter.counts["truncated_responses"] > 0
    assert [run.reference_from_cache for run in (base, longer, shorter, batched)] == [False, True, False, False]
    assert len(list((tmp_path / "shared").glob("*.safetensors"))) == 3
