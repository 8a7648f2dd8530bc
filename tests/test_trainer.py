"""The trainer on tiny random models: the step-1 loss against an independent computation, resume, caching, LoRA."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from helpers import (
    PAIRS,
    SMOOTH_ADAM,
    assert_trained_alike,
    pair_record,
    recipe_for,
    train_killed_at,
    train_recipe,
    write_lines,
)
from safetensors.torch import load_file
from torch.testing import assert_close

from wpo.config import config_hash
from wpo.errors import ConfigError, DataError, WpoError
from wpo.training import precision, trainer
from wpo.training.metrics import read_metrics
from wpo.training.tokenize import PromptSharing, TokenizedPair


def response_statistics(model, tokenizer, prompt, response, softcap):
    """log p(response | prompt) and the mean of log p(t) - log Σ p², the paper's way: one sequence, softmax, p²."""
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = model.lm_head(hidden)[0].double()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    predicting = logits[len(prompt_ids) - 1 : -1]
    targets = torch.tensor(response_ids)
    token_logps = torch.log_softmax(predicting, -1)[torch.arange(len(targets)), targets]
    log_sum_p2 = torch.log((torch.softmax(predicting, -1) ** 2).sum(-1))
    return token_logps.sum().item(), (token_logps - log_sum_p2).mean().item()


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_step_one_loss_equals_the_wpo_formula(tmp_path, pairs_file, kind, request, tiny_llama_reference):
    """At step 1 the lr is 0 (warmup), so the logged loss is the WPO loss of the initial policy on all 6 pairs.

    For gemma2 the independent computation applies the final-logit soft-cap (2.0) itself to `lm_head(hidden)`; the
    uncapped value must differ, so the check would catch a missing or doubled cap.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = request.getfixturevalue(f"tiny_{kind}")
    extra = [f"train.reference_model={tiny_llama_reference}"] if kind == "llama" else []
    recipe = recipe_for(
        tmp_path,
        model_dir,
        pairs_file,
        "train.gradient_accumulation_steps=3",
        "train.beta=0.5",
        "train.max_steps=2",
        *extra,
    )
    trainer.train(recipe)
    first = read_metrics(tmp_path / "run" / "train" / "metrics.jsonl")[0]
    assert first["step"] == 1 and first["learning_rate"] == 0.0 and first["pairs"] == 6

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_reference) if kind == "llama" else policy
    softcap = policy.config.final_logit_softcapping if kind == "gemma2" else None

    def wpo_losses(cap):
        losses = []
        for _, prompt, chosen, rejected in PAIRS:
            messages = [{"role": "user", "content": prompt}]
            logp_w, a_w = response_statistics(policy, tokenizer, messages, chosen, cap)
            logp_l, a_l = response_statistics(policy, tokenizer, messages, rejected, cap)
            ref_w, _ = response_statistics(reference, tokenizer, messages, chosen, cap)
            ref_l, _ = response_statistics(reference, tokenizer, messages, rejected, cap)
            z = torch.tensor((logp_w - logp_l) - (ref_w - ref_l), dtype=torch.float64)
            weight = min(1.0, torch.exp(torch.tensor(a_w + a_l)).item())
            losses.append(weight * -torch.nn.functional.logsigmoid(0.5 * z).item())
        return sum(losses) / len(losses)

    assert first["loss"] == pytest.approx(wpo_losses(softcap), rel=1e-5)
    if kind == "gemma2":
        assert abs(wpo_losses(None) - first["loss"]) > 1e-3


def test_a_steps_logged_figures_are_means_over_its_pairs():
    """Hand-worked: margins 1, -1, 0 have mean 0, and only the first counts as a correct preference (a tie does
    not)."""
    stats = {
        "loss": torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64),
        "weight": torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64),
        "rewards_chosen": torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64),
        "rewards_rejected": torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64),
        "logps_chosen": torch.tensor([-3.0, -6.0, -9.0], dtype=torch.float64),
        "logps_rejected": torch.tensor([-4.0, -5.0, -6.0], dtype=torch.float64),
    }
    assert trainer.step_means(stats) == pytest.approx(
        {
            "loss": 1.0,
            "weight_mean": 0.5,
            "weight_min": 0.2,
            "weight_max": 0.8,
            "rewards_chosen": 1.0,
            "rewards_rejected": 1.0,
            "reward_margin": 0.0,
            "reward_accuracy": 1 / 3,
            "logps_chosen": -6.0,
            "logps_rejected": -5.0,
        }
    )


def test_resume_reproduces_the_uninterrupted_curve(tmp_path, tiny_llama, pairs_file, monkeypatch):
    """6 pairs, 2 per step: 3 steps per epoch, 5 steps cross an epoch boundary. Kill after step 3, resume from 2."""
    common = ("train.max_steps=5", "train.save_steps=2")
    uninterrupted = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, run="straight"))
    straight = read_metrics(tmp_path / "straight" / "train" / "metrics.jsonl")

    train_killed_at(monkeypatch, recipe_for(tmp_path, tiny_llama, pairs_file, *common, run="killed"), step=3)
    assert [row["step"] for row in read_metrics(tmp_path / "killed" / "train" / "metrics.jsonl")] == [1, 2, 3]

    result = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, run="killed"))
    assert result.counts["resumed_from_step"] == 2 and result.reference_from_cache
    resumed = read_metrics(tmp_path / "killed" / "train" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    for key in ("loss", "weight_mean", "reward_margin", "learning_rate", "logps_chosen"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in straight], rel=1e-6, abs=1e-9), key
    final_a = load_file(str(tmp_path / "straight" / "train" / "final" / "model.safetensors"))
    final_b = load_file(str(tmp_path / "killed" / "train" / "final" / "model.safetensors"))
    for name, tensor in final_a.items():
        torch.testing.assert_close(final_b[name], tensor, rtol=1e-6, atol=1e-7)
    # the per-pair table and the run's weight figures survive the resume: saved with checkpoint-2, continued after it
    straight_pairs, resumed_pairs = (
        read_jsonl(tmp_path / run / "train" / "pair_weights.jsonl") for run in ("straight", "killed")
    )
    assert [(r["id"], r["visits"], r["step_first"], r["step_last"]) for r in resumed_pairs] == [
        (r["id"], r["visits"], r["step_first"], r["step_last"]) for r in straight_pairs
    ]
    for a, b in zip(straight_pairs, resumed_pairs, strict=True):
        assert [b[k] for k in ("weight_first", "weight_last")] == pytest.approx(
            [a[k] for k in ("weight_first", "weight_last")], rel=1e-6
        )
    assert result.weights.pop("weight_mean_by_source") == pytest.approx(
        uninterrupted.weights.pop("weight_mean_by_source"), rel=1e-6
    )
    assert result.weights == pytest.approx(uninterrupted.weights, rel=1e-6)


def test_a_checkpoint_from_before_the_weight_table_resumes_with_the_table_from_there(
    tmp_path, tiny_llama, pairs_file, monkeypatch, caplog
):
    recipe = recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=3", "train.save_steps=2")
    train_killed_at(monkeypatch, recipe, step=2)
    (tmp_path / "run" / "train" / "checkpoint-2" / "weights.json").unlink()
    with caplog.at_level(logging.WARNING):
        result = trainer.train(recipe)
    assert "has no weights.json: pair_weights.jsonl covers the steps after 2 only" in caplog.text
    rows = read_jsonl(tmp_path / "run" / "train" / "pair_weights.jsonl")
    assert [row["step_first"] for row in rows] == [3, 3] and result.weights["pair_visits"] == 2


def test_outputs_metrics_manifest_and_reference_cache(tmp_path, tiny_llama, pairs_file):
    result = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=3", "train.save_steps=2"))
    train_dir = tmp_path / "run" / "train"
    assert result.reference_from_cache is False
    rows = read_metrics(train_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    required = {
        "step",
        "loss",
        "weight_mean",
        "weight_min",
        "weight_max",
        "rewards_chosen",
        "rewards_rejected",
        "reward_margin",
        "reward_accuracy",
        "logps_chosen",
        "logps_rejected",
        "learning_rate",
        "tokens_per_second",
    }
    assert required <= set(rows[0])
    assert all(0.0 < r["weight_min"] <= r["weight_mean"] <= r["weight_max"] <= 1.0 for r in rows)
    assert list((train_dir / "tensorboard").glob("events.out.tfevents.*"))

    final = train_dir / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    trained = json.loads((final / "wpo_training.json").read_text())
    assert trained["train"]["beta"] == 0.1 and trained["global_batch_pairs"] == 2 and trained["total_steps"] == 3
    assert sorted(p.name for p in train_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert {p.name for p in (train_dir / "checkpoint-2").iterdir()} == {
        "model",
        "optimizer.safetensors",
        "rng.safetensors",
        "trainer_state.json",
        "weights.json",
    }
    run_dir = tmp_path / "run"
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".tmp")]

    manifest = json.loads((train_dir / "manifest.json").read_text())
    assert manifest["completed"] and manifest["stage"] == "train" and manifest["seed"] == 3
    assert manifest["counts"]["written"] == 6 and manifest["counts"]["skipped"] == {}
    assert "torch" in manifest["versions"] and manifest["wall_seconds"] > 0
    cache = Path(manifest["reference_cache"])
    assert cache.parent == train_dir / "reference_cache" and cache.is_file()
    assert sorted(p.name for p in pairs_file.parent.iterdir()) == ["pairs.jsonl", "run"]  # nothing beside the input

    again = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=3", "train.resume=never"))
    assert again.reference_from_cache is True
    assert read_metrics(train_dir / "metrics.jsonl")[0]["loss"] == rows[0]["loss"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def hybrid_pairs(tmp_path: Path, **own_weights: float) -> Path:
    """PAIRS with the first three chosen from an off-policy reference answer, as a hybrid pool pairs them; `p2=2.0`
    gives pair p2 its own weight."""
    records = [pair_record(*pair) for pair in PAIRS]
    for record in records[:3]:
        record["source_chosen"] = "offpolicy:reference"
    for record in records:
        if record["id"] in own_weights:
            record["weight"] = own_weights[record["id"]]
    return write_lines(tmp_path / "pairs.jsonl", records)


def test_pair_weights_file_agrees_with_the_logged_steps_field_by_field(tmp_path, tiny_llama):
    """6 pairs, 2 per step, 4 steps: steps 1-3 visit every pair once, step 4 (epoch 2) two of them again. Each step's
    ESS, clamped share, mean weight by pair kind and reward margin come back from the pairs' rows; the manifest holds
    the same figures over all 8 visits."""
    pairs = hybrid_pairs(tmp_path)
    result = trainer.train(recipe_for(tmp_path, tiny_llama, pairs, "train.max_steps=4"))
    train_dir = tmp_path / "run" / "train"
    steps = read_metrics(train_dir / "metrics.jsonl")
    rows = read_jsonl(train_dir / "pair_weights.jsonl")

    assert sorted(row["id"] for row in rows) == sorted(pair[0] for pair in PAIRS)
    for row in rows:
        expected_source = "offpolicy:reference" if row["id"] in ("p1", "p2", "p3") else "policy"
        assert (row["source_chosen"], row["source_rejected"]) == (expected_source, "policy")
        assert 1 <= row["step_first"] <= 3 and row["visits"] == (2 if row["step_last"] == 4 else 1)
        assert row["step_last"] == (4 if row["visits"] == 2 else row["step_first"])
        assert 0.0 < row["weight_first"] <= 1.0 and 0.0 < row["weight_last"] <= 1.0
        if row["visits"] == 1:
            assert (row["weight_last"], row["margin_last"]) == (row["weight_first"], row["margin_first"])
    assert sum(row["visits"] for row in rows) == 8

    for step in steps:
        visited = [
            (row["weight_first"], row["margin_first"])
            if step["step"] <= 3
            else (row["weight_last"], row["margin_last"])
            for row in rows
            if (row["step_first"] if step["step"] <= 3 else row["step_last"]) == step["step"]
        ]
        kinds = [
            f"{row['source_chosen']} vs {row['source_rejected']}"
            for row in rows
            if (row["step_first"] if step["step"] <= 3 else row["step_last"]) == step["step"]
        ]
        weights = torch.tensor([weight for weight, _ in visited], dtype=torch.float64)
        assert step["pairs"] == len(visited) == 2
        assert step["weight_ess"] == pytest.approx(weights.sum().item() ** 2 / (weights**2).sum().item(), rel=1e-12)
        assert step["weight_ess_share"] == pytest.approx(step["weight_ess"] / 2, rel=1e-12)
        assert step["weight_clamped_share"] == sum(weight == 1.0 for weight, _ in visited) / 2
        by_kind = {kind: [w for k, (w, _) in zip(kinds, visited, strict=True) if k == kind] for kind in set(kinds)}
        assert step["weight_mean_by_source"] == pytest.approx({k: sum(v) / len(v) for k, v in by_kind.items()})
        assert step["reward_margin"] == pytest.approx(sum(m for _, m in visited) / 2, rel=1e-6, abs=1e-9)
        assert step["weight_mean"] == pytest.approx(weights.mean().item(), rel=1e-12)

    manifest = json.loads((train_dir / "manifest.json").read_text())
    visits = [row["weight_first"] for row in rows] + [row["weight_last"] for row in rows if row["visits"] == 2]
    assert manifest["weights"] == result.weights
    assert manifest["weights"]["pair_visits"] == 8 and manifest["weights"]["pairs_visited"] == 6
    assert manifest["weights"]["weight_mean"] == pytest.approx(sum(visits) / 8, rel=1e-12)
    assert set(manifest["weights"]["weight_mean_by_source"]) == {"offpolicy:reference vs policy", "policy vs policy"}
    assert manifest["counts"]["pairs_with_weight"] == 0 and "pair_weights.jsonl" in manifest["outputs"]
    assert "weight_scale" not in steps[0]  # only under train.normalize_weights


@pytest.mark.parametrize("weighting", ["none", "wpo"])
def test_a_pairs_own_weight_multiplies_its_loss(tmp_path, tiny_llama, weighting):
    """One step over all 6 pairs at learning rate 0 (warmup), where the policy is its reference: z = 0, so every
    pair's unweighted loss is -ln σ(0) = ln 2. With p2's own weight 2 and p5's 0, the step's loss is
    ln 2 · (1 + 2 + 1 + 1 + 0 + 1) / 6 = ln 2 · 7/6 without WPO, and ln 2 · Σ own_i · w_i / 6 with WPO's weights w_i."""
    pairs = hybrid_pairs(tmp_path, p2=2.0, p5=0)
    recipe = recipe_for(
        tmp_path,
        tiny_llama,
        pairs,
        "train.max_steps=1",
        "train.gradient_accumulation_steps=3",
        f"train.weighting={weighting}",
    )
    result = trainer.train(recipe)
    first = read_metrics(tmp_path / "run" / "train" / "metrics.jsonl")[0]
    assert first["pairs"] == 6 and first["learning_rate"] == 0.0
    own = {"p2": 2.0, "p5": 0.0}
    rows = read_jsonl(tmp_path / "run" / "train" / "pair_weights.jsonl")
    weighted = sum(own.get(row["id"], 1.0) * row["weight_first"] for row in rows)
    if weighting == "none":
        assert weighted == 6.0  # WPO's weights are all 1
    assert first["loss"] == pytest.approx(math.log(2) * weighted / 6, rel=1e-5)
    assert result.counts["pairs_with_weight"] == 2


def test_normalized_weights_average_one_over_the_step(tmp_path, tiny_llama, pairs_file):
    """Step 1 over all 6 pairs in 3 micro-batches, at z = 0 (each pair's loss ln 2): with the weights scaled to mean
    1 over the step, the step's loss is ln 2 · Σ w_i s / 6 = ln 2 exactly as the answer, where the paper's unscaled
    weights give ln 2 · mean(w). The scale s = 1 / mean(w) multiplies the whole step's gradient, so the gradient
    norm is the unscaled one times s; the weights reported stay WPO's own."""
    common = ("train.max_steps=1", "train.gradient_accumulation_steps=3")
    trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, run="plain"))
    trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, "train.normalize_weights=true", run="norm"))
    (plain,), (normalized,) = (read_metrics(tmp_path / run / "train" / "metrics.jsonl") for run in ("plain", "norm"))
    assert plain["weight_mean"] < 0.99  # the weights really are below 1 here: the scale does something
    assert plain["loss"] == pytest.approx(math.log(2) * plain["weight_mean"], rel=1e-5)
    assert normalized["loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert normalized["weight_scale"] == pytest.approx(1 / plain["weight_mean"], rel=1e-6)
    assert normalized["weight_mean"] == pytest.approx(plain["weight_mean"], rel=1e-6)
    assert normalized["grad_norm"] == pytest.approx(plain["grad_norm"] * normalized["weight_scale"], rel=1e-5)


def test_a_datasets_directory_of_pairs_is_never_written_to(tmp_path, tiny_llama):
    """The reference cache once went into the pairs' own `save_to_disk` directory, which changed its fingerprint,
    so the same command run twice refused its own checkpoint. Inputs are read-only to a run."""
    import datasets

    pairs_dir = tmp_path / "pairs-dataset"
    datasets.Dataset.from_list([pair_record(*pair) for pair in PAIRS]).save_to_disk(str(pairs_dir))
    before = {p.relative_to(pairs_dir): p.read_bytes() for p in pairs_dir.rglob("*") if p.is_file()}
    first = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_dir, "train.max_steps=2"))
    second = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_dir, "train.max_steps=2"))  # the same command
    assert (first.reference_from_cache, second.counts["resumed_from_step"]) == (False, 2)
    after = {p.relative_to(pairs_dir): p.read_bytes() for p in pairs_dir.rglob("*") if p.is_file()}
    assert after == before


def test_another_configs_checkpoints_are_moved_aside_and_training_starts_over(tmp_path, tiny_llama, pairs_file, caplog):
    """A training killed (or finished) under another config — its pairs changed upstream, a setting changed — is
    never resumed from, never refused and never deleted: it moves to train.replaced-<hash>/ with one line."""
    trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=2"))
    first = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())["config_hash"]
    with caplog.at_level(logging.WARNING, logger="wpo.manifest"):
        again = trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=2", "train.beta=0.2"))
    assert again.counts["resumed_from_step"] == 0
    replaced = tmp_path / "run" / f"train.replaced-{first}"
    assert (replaced / "checkpoint-2").is_dir() and (replaced / "final" / "model.safetensors").is_file()
    assert (
        f"train is redone: its checkpoints were written by another config (differs in: train.beta); the "
        f"earlier result is kept in {replaced}" in caplog.text
    )
    assert (tmp_path / "run" / "train" / "reference_cache").is_dir()  # the reference pass is kept for reuse
    fresh = trainer.train(
        recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=2", "train.beta=0.2", "train.resume=never")
    )
    assert fresh.counts["resumed_from_step"] == 0


def test_what_only_trades_memory_or_speed_leaves_the_run_config_alone(tmp_path, tiny_llama, pairs_file):
    """Checkpoints are found by the run config's hash: a run that ran out of memory may resume with a smaller loss
    chunk or another prompt layout, one may switch compiled layers (train.compile) on or off, and logging or saving
    more often changes nothing trained, while a setting of the loss, the optimizer or the precision starts another
    run."""
    base = trainer.run_config(recipe_for(tmp_path, tiny_llama, pairs_file))
    for same in (
        "train.loss_chunk_size=4",
        "train.share_prompts=never",
        "train.compile=true",
        "train.logging_steps=7",
        "train.save_steps=3",
    ):
        assert trainer.run_config(recipe_for(tmp_path, tiny_llama, pairs_file, same)) == base, same
    for other in ("train.beta=0.2", "train.optimizer=adamw_8bit", "train.mixed_precision=bf16", "seed=4"):
        changed = trainer.run_config(recipe_for(tmp_path, tiny_llama, pairs_file, other))
        assert changed != base and config_hash(changed) != config_hash(base), other


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, tiny_llama, pairs_file):
    """2 pairs x 1 micro-batch and 1 pair x 2 micro-batches give the same update (the loss is a mean over pairs)."""
    common = ("train.max_steps=2", "train.warmup_ratio=0.0", "train.max_grad_norm=null", *SMOOTH_ADAM)
    trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, run="big"))
    trainer.train(
        recipe_for(
            tmp_path,
            tiny_llama,
            pairs_file,
            *common,
            "train.per_device_batch_size=1",
            "train.gradient_accumulation_steps=2",
            run="accumulated",
        )
    )
    big = read_metrics(tmp_path / "big" / "train" / "metrics.jsonl")
    accumulated = read_metrics(tmp_path / "accumulated" / "train" / "metrics.jsonl")
    assert [r["loss"] for r in accumulated] == pytest.approx([r["loss"] for r in big], rel=1e-5)
    a = load_file(str(tmp_path / "big" / "train" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "accumulated" / "train" / "final" / "model.safetensors"))
    # each run computes its reference pass at its own batch size: padding moves the last bits
    assert_trained_alike(b, a, load_file(str(tiny_llama / "model.safetensors")))


def test_gradient_checkpointing_changes_nothing_but_memory(tmp_path, tiny_llama, pairs_file, monkeypatch):
    """Checkpointing is really on (every decoder layer goes through its checkpoint function at every step), and the
    losses do not change."""
    checkpointed_layers: dict[str, int] = {}
    real_make_trainable = trainer._make_trainable

    def counting(model, cfg, lora, resume_point):
        model = real_make_trainable(model, cfg, lora, resume_point)
        name = "checkpointed" if cfg.gradient_checkpointing else "plain"
        checkpointed_layers[name] = 0
        for layer in (m for m in model.modules() if getattr(m, "gradient_checkpointing", False)):
            real = layer._gradient_checkpointing_func

            def counted(*args, real=real, **kwargs):
                checkpointed_layers[name] += 1
                return real(*args, **kwargs)

            layer._gradient_checkpointing_func = counted
        return model

    monkeypatch.setattr(trainer, "_make_trainable", counting)
    trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=2", run="plain"))
    trainer.train(
        recipe_for(
            tmp_path,
            tiny_llama,
            pairs_file,
            "train.max_steps=2",
            "train.gradient_checkpointing=true",
            run="checkpointed",
        )
    )
    assert checkpointed_layers == {"plain": 0, "checkpointed": 2 * 2}  # 2 steps x the tiny model's 2 layers
    plain = read_metrics(tmp_path / "plain" / "train" / "metrics.jsonl")
    checkpointed = read_metrics(tmp_path / "checkpointed" / "train" / "metrics.jsonl")
    assert [r["loss"] for r in checkpointed] == pytest.approx([r["loss"] for r in plain], rel=1e-5)


def test_lora_trains_an_adapter(tmp_path, tiny_llama, pairs_file):
    lora = "model.lora={r: 4, alpha: 8, dropout: 0.0}"
    result = trainer.train(
        recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=3", lora, "train.learning_rate=1e-2")
    )
    adapter = load_file(str(result.final_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: non-zero means it trained
    assert not (result.final_dir / "model.safetensors").exists()
    rows = read_metrics(tmp_path / "run" / "train" / "metrics.jsonl")
    assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)  # B = 0 at step 1: the policy is the reference
    assert abs(rows[-1]["reward_margin"]) > 1e-3


def test_bad_pairs_fail_or_are_counted(tmp_path, tiny_llama):
    records = [pair_record(*pair) for pair in PAIRS] + [pair_record("long", "seven " * 200, "a", "b")]
    pairs = write_lines(tmp_path / "pairs.jsonl", records + ['{"id": "broken"'])
    with pytest.raises(DataError, match=r"pairs.jsonl:8: invalid JSON"):
        trainer.train(recipe_for(tmp_path, tiny_llama, pairs, "train.max_steps=1", "train.max_prompt_length=null"))
    write_lines(pairs, records)
    with pytest.raises(DataError, match=r"pairs.jsonl:7 \(pair long\): prompt has \d+ tokens, leaving no room"):
        trainer.train(recipe_for(tmp_path, tiny_llama, pairs, "train.max_steps=1", "train.max_prompt_length=null"))
    write_lines(pairs, records + ['{"id": "broken"'])
    result = trainer.train(
        recipe_for(
            tmp_path, tiny_llama, pairs, "train.max_steps=1", "train.max_prompt_length=null", "on_bad_record=skip"
        )
    )
    assert result.counts["skipped"] == {"invalid_json": 1, "prompt_too_long": 1}
    assert result.counts["written"] == 6


def test_global_batch_size_mismatch_fails(tmp_path, tiny_llama, pairs_file):
    with pytest.raises(ConfigError, match=r"train.global_batch_size is 128, but per_device_batch_size 2 x .* = 2"):
        trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.global_batch_size=128"))


def tokenized_pairs(model_dir: Path, pairs_file: Path):
    from wpo.data.io import BadRecordPolicy
    from wpo.data.schemas import load_pairs
    from wpo.models import load_tokenizer
    from wpo.training.tokenize import tokenize_pairs

    tokenizer = load_tokenizer(str(model_dir))
    pairs = load_pairs(str(pairs_file), BadRecordPolicy()).pairs
    return tokenize_pairs(pairs, tokenizer, max_length=96, max_prompt_length=48, policy=BadRecordPolicy()), tokenizer


def tiny_model(model_dir: Path, lora_targets: list[str] | None = None):
    """The trainer's loader; with `lora_targets`, a LoRA model whose B matrices are random (not zero), so that every
    adapter weight gets a gradient and the adapter changes the logits."""
    from wpo.config import ModelConfig
    from wpo.models import load_causal_lm

    model = load_causal_lm(str(model_dir), ModelConfig())
    if lora_targets is not None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=lora_targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=0.2)
    return model


@pytest.mark.parametrize("kind", ["llama", "gemma2", "llama-lora"])
def test_chunked_pair_statistics_equal_the_full_logits_path(kind, request, pairs_file):
    """Values and the gradient of every trainable weight, through a real model: the hidden state the chunked path
    projects is the final-norm output, Gemma-2's soft-cap (2.0, bending hard here) is applied, LoRA trains alike."""
    from wpo.training.forward import pair_statistics
    from wpo.training.tokenize import collate_pairs

    model_dir = request.getfixturevalue(f"tiny_{kind.removesuffix('-lora')}")
    model = tiny_model(model_dir, ["q_proj", "v_proj", "down_proj"] if kind.endswith("lora") else None)
    tokens, tokenizer = tokenized_pairs(model_dir, pairs_file)
    batch = collate_pairs(tokens.pairs[:3], tokenizer.pad_token_id)
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for chunk_size in (0, 5):  # 5 divides none of the response lengths: chunks straddle sequences
        chosen, rejected = pair_statistics(model, batch, loss_chunk_size=chunk_size)
        objective = (chosen.logps - rejected.logps).sum() + 10.0 * (chosen.aligned_logps + rejected.aligned_logps).sum()
        results[chunk_size] = (chosen, rejected, torch.autograd.grad(objective, trainable))
    (chosen, rejected, grads), (full_chosen, full_rejected, full_grads) = results[5], results[0]
    for actual, expected in ((chosen, full_chosen), (rejected, full_rejected)):
        torch.testing.assert_close(actual.logps, expected.logps, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(actual.aligned_logps, expected.aligned_logps, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(full_grads) > 0
    for grad, full_grad in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(grad, full_grad, rtol=1e-4, atol=1e-4 * full_grad.abs().max().item())


def test_chunked_path_refuses_heads_it_cannot_reproduce(tiny_llama, pairs_file):
    """An adapter on the output layer, or logits the model scales after its output layer: a clear error, not a
    silently different loss."""
    from wpo.errors import WpoError
    from wpo.training.forward import pair_statistics
    from wpo.training.tokenize import collate_pairs

    tokens, tokenizer = tokenized_pairs(tiny_llama, pairs_file)
    batch = collate_pairs(tokens.pairs[:1], tokenizer.pad_token_id)
    with pytest.raises(
        WpoError, match=r"output layer is a peft\..*Linear, not a torch.nn.Linear .*train.loss_chunk_size: 0"
    ):
        pair_statistics(tiny_model(tiny_llama, ["lm_head"]), batch, loss_chunk_size=8)
    scaled = tiny_model(tiny_llama)
    scaled.lm_head.register_forward_hook(lambda module, inputs, output: output * 0.5)
    with pytest.raises(WpoError, match="scales its logits .*train.loss_chunk_size: 0"):
        pair_statistics(scaled, batch, loss_chunk_size=8)
    assert "forward" not in vars(scaled.lm_head)  # the error left the layer's own forward in place
    pair_statistics(scaled, batch, loss_chunk_size=0)  # the full-logits path takes the model's own logits


def test_chunked_loss_runs_as_the_output_layers_forward(tiny_llama, pairs_file):
    """Inside the layer's own hooks — where ZeRO-3 and FSDP gather a sharded weight (`test_distributed.py` runs it
    under FSDP) — with the layer's own forward back in place afterwards."""
    from wpo.training.forward import pair_statistics
    from wpo.training.tokenize import collate_pairs

    tokens, tokenizer = tokenized_pairs(tiny_llama, pairs_file)
    batch = collate_pairs(tokens.pairs[:2], tokenizer.pad_token_id)
    model = tiny_model(tiny_llama)
    calls = []
    model.lm_head.register_forward_pre_hook(lambda module, args: calls.append([tuple(a.shape) for a in args]))
    chunked = pair_statistics(model, batch, loss_chunk_size=4)
    hidden_size = model.config.hidden_size
    assert calls == [
        [(4, 1, hidden_size)],  # the model's own call, for the one position it checks
        [(4, batch.logits_to_keep, hidden_size), (4, hidden_size), (4, batch.logits_to_keep)],
    ]
    assert "forward" not in vars(model.lm_head)
    for actual, expected in zip(chunked, pair_statistics(model, batch, loss_chunk_size=0), strict=True):
        assert_close(actual.logps, expected.logps, rtol=1e-5, atol=1e-5)
        assert_close(actual.aligned_logps, expected.aligned_logps, rtol=1e-5, atol=1e-5)


def test_reference_logps_come_back_in_the_pairs_order_though_batched_by_length(tiny_llama, pairs_file):
    from wpo.training.reference_logps import compute_reference_logps

    model = tiny_model(tiny_llama)
    tokens, tokenizer = tokenized_pairs(tiny_llama, pairs_file)
    lengths = [p.token_count for p in tokens.pairs]
    assert lengths != sorted(lengths)  # batching by length reorders these pairs
    batched = compute_reference_logps(
        model, tokens, 4, tokenizer.pad_token_id, "cpu", loss_chunk_size=7, sharing=PromptSharing("always")
    )
    one_by_one = compute_reference_logps(model, tokens, 1, tokenizer.pad_token_id, "cpu", loss_chunk_size=7)
    for actual, expected in zip(batched, one_by_one, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    shard = compute_reference_logps(model, tokens, 2, tokenizer.pad_token_id, "cpu", loss_chunk_size=7, indices=[4, 1])
    torch.testing.assert_close(shard[0], one_by_one[0][[4, 1]], rtol=1e-5, atol=1e-5)


def test_reference_logps_by_the_chunked_path_equal_the_full_path(tiny_gemma2, pairs_file):
    from wpo.training.reference_logps import compute_reference_logps

    model = tiny_model(tiny_gemma2)
    tokens, tokenizer = tokenized_pairs(tiny_gemma2, pairs_file)
    chunked = compute_reference_logps(model, tokens, 4, tokenizer.pad_token_id, "cpu", loss_chunk_size=7)
    full = compute_reference_logps(model, tokens, 4, tokenizer.pad_token_id, "cpu", loss_chunk_size=0)
    assert chunked[0].shape == (6,) and bool((chunked[0] < 0).all())
    for actual, expected in zip(chunked, full, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_training_with_and_without_chunking_gives_the_same_weights(tmp_path, tiny_gemma2, pairs_file):
    """Two optimizer steps of two accumulated micro-batches each, soft-capped model: same losses, same weights."""
    common = (
        "train.max_steps=2",
        "train.warmup_ratio=0.0",
        "train.per_device_batch_size=1",
        "train.gradient_accumulation_steps=2",
        "train.max_grad_norm=null",
        *SMOOTH_ADAM,
    )
    trainer.train(recipe_for(tmp_path, tiny_gemma2, pairs_file, *common, "train.loss_chunk_size=0", run="full"))
    trainer.train(recipe_for(tmp_path, tiny_gemma2, pairs_file, *common, "train.loss_chunk_size=3", run="chunked"))
    full = read_metrics(tmp_path / "full" / "train" / "metrics.jsonl")
    chunked = read_metrics(tmp_path / "chunked" / "train" / "metrics.jsonl")
    for key in ("loss", "weight_mean", "logps_chosen", "logps_rejected"):
        assert [r[key] for r in chunked] == pytest.approx([r[key] for r in full], rel=1e-5), key
    a = load_file(str(tmp_path / "full" / "train" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "chunked" / "train" / "final" / "model.safetensors"))
    assert_trained_alike(b, a, load_file(str(tiny_gemma2 / "model.safetensors")))


def test_training_with_and_without_shared_prompts_gives_the_same_weights(tmp_path, tiny_llama, pairs_file, caplog):
    """Two steps of two pairs per micro-batch, accumulated twice: each prompt computed once for both answers trains
    the weights that padded rows train, and the run logs what it computed."""
    common = (
        "train.max_steps=2",
        "train.warmup_ratio=0.0",
        "train.per_device_batch_size=2",
        "train.gradient_accumulation_steps=2",
        *SMOOTH_ADAM,
    )
    trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, "train.share_prompts=never", run="padded"))
    with caplog.at_level(logging.INFO, logger="wpo.training.forward"):
        trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, "train.share_prompts=always", run="shared"))
    assert (
        "prompts: computed once for both of their answers in every batch (train.share_prompts: always)" in caplog.text
    )
    padded = read_metrics(tmp_path / "padded" / "train" / "metrics.jsonl")
    shared = read_metrics(tmp_path / "shared" / "train" / "metrics.jsonl")
    for key in ("loss", "weight_mean", "logps_chosen", "logps_rejected", "grad_norm"):
        assert [r[key] for r in shared] == pytest.approx([r[key] for r in padded], rel=1e-5), key
    a = load_file(str(tmp_path / "padded" / "train" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "shared" / "train" / "final" / "model.safetensors"))
    assert_trained_alike(b, a, load_file(str(tiny_llama / "model.safetensors")))


def test_a_steps_micro_batches_group_its_pairs_by_length(tmp_path, tiny_llama, pairs_file, monkeypatch):
    """The step trains on the schedule's pairs, dealt out to micro-batches shortest first, so less is padding."""
    collated = []
    real_collate = trainer.collate_pairs
    monkeypatch.setattr(
        trainer, "collate_pairs", lambda pairs, *a, **k: collated.append(pairs) or real_collate(pairs, *a, **k)
    )
    state = trainer.setup(
        recipe_for(
            tmp_path,
            tiny_llama,
            pairs_file,
            "train.per_device_batch_size=2",
            "train.gradient_accumulation_steps=2",
            "train.max_steps=1",
        )
    )
    collated.clear()  # the reference pass's
    trainer.train_step(state, 0)
    scheduled = [state.tokens.pairs[i] for i in state.schedule.step_indices(0)]
    assert len(collated) == 2 and sorted(p.id for b in collated for p in b) == sorted(p.id for p in scheduled)
    lengths = [p.token_count for batch in collated for p in batch]
    assert lengths == sorted(p.token_count for p in scheduled) and lengths != [p.token_count for p in scheduled]


def test_auto_shares_a_prompt_where_that_costs_fewer_flops():
    """Worked by hand, 100 multiply-adds of weights per position and 1 of attention per query-key pair. A 10-token
    prompt with 2-token answers: padded 2 x (12 x 100 + 12²/2) = 2544 against shared 14 x 100 + 14² = 1596. A 2-token
    prompt with 100-token answers: padded 2 x (102 x 100 + 102²/2) = 30804 against shared 202 x 100 + 202² = 61004,
    the dense mask's attention outweighing the prompt saved."""
    costs = PromptSharing("auto", weights_per_position=100, attention_per_pair=1)
    long_prompt = [TokenizedPair("a", list(range(10)), [1, 2], [3, 4])]
    long_answers = [TokenizedPair("b", [1, 2], list(range(100)), list(range(100)))]
    assert costs.applies_to(long_prompt) and not costs.applies_to(long_answers)
    assert PromptSharing("always").applies_to(long_answers) and not PromptSharing("never").applies_to(long_prompt)


def test_the_models_costs_are_its_body_weights_and_attention_width(tiny_llama):
    from wpo.training.forward import prompt_sharing

    model = tiny_model(tiny_llama)
    sharing = prompt_sharing(model, "auto", 64)
    config = model.config
    layer = sum(p.numel() for p in model.model.layers[0].parameters() if p.ndim == 2)
    assert sharing.weights_per_position == config.num_hidden_layers * layer
    assert sharing.attention_per_pair == 2 * config.num_hidden_layers * config.hidden_size
    assert prompt_sharing(model, "never", 64) == PromptSharing("never")


def test_a_model_that_cannot_share_prompts_trains_on_padded_rows(tmp_path, tiny_gemma2, pairs_file, caplog):
    with caplog.at_level(logging.INFO, logger="wpo.training.forward"):
        trainer.train(recipe_for(tmp_path, tiny_gemma2, pairs_file, "train.max_steps=1"))
    assert (
        "train.share_prompts: the model cannot share a prompt between its answers (it has 16-token sliding-window "
        "attention, shorter than train.max_length 96); each answer gets its own padded row"
    ) in caplog.text


def test_reference_model_is_gone_before_training(tmp_path, tiny_llama, tiny_llama_reference, pairs_file, monkeypatch):
    """A separate reference model serves its one pass and is freed: only the policy is alive at every step."""
    import gc
    import weakref

    loaded = []
    real_load, real_step = trainer.load_causal_lm, trainer.train_step

    def recording_load(*args):
        model = real_load(*args)
        loaded.append(weakref.ref(model))
        return model

    def checking_step(*args):
        gc.collect()
        assert len(loaded) == 2 and sum(ref() is not None for ref in loaded) == 1
        return real_step(*args)

    monkeypatch.setattr(trainer, "load_causal_lm", recording_load)
    monkeypatch.setattr(trainer, "train_step", checking_step)
    trainer.train(
        recipe_for(
            tmp_path, tiny_llama, pairs_file, "train.max_steps=1", f"train.reference_model={tiny_llama_reference}"
        )
    )


def model_with_an_infinite_weight(tmp_path: Path, model: Path) -> Path:
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "broken-model"
    shutil.copytree(model, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(n for n in weights if "layers.0.mlp.up_proj" in n)
    weights[name][0, 0] = float("inf")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    return broken


@pytest.mark.parametrize("loss_chunk_size", [0, 256])
def test_a_non_finite_model_is_named_in_the_reference_pass(tmp_path, tiny_llama, pairs_file, loss_chunk_size):
    """One inf weight once failed as 'the model's logits are not softcap(...)', pointing at the chunked loss."""
    broken = model_with_an_infinite_weight(tmp_path, tiny_llama)
    recipe = recipe_for(tmp_path, broken, pairs_file, "train.max_steps=1", f"train.loss_chunk_size={loss_chunk_size}")
    with pytest.raises(
        WpoError,
        match=r"^non-finite (logits|log-probs \(the model's logits are not finite\)) in the "
        r"reference pass, pairs \['p\d', 'p\d'\]$",
    ):
        trainer.train(recipe)


def test_a_non_finite_policy_is_named_at_its_step(tmp_path, tiny_llama, pairs_file):
    broken = model_with_an_infinite_weight(tmp_path, tiny_llama)
    recipe = recipe_for(tmp_path, broken, pairs_file, "train.max_steps=1", f"train.reference_model={tiny_llama}")
    with pytest.raises(WpoError, match=r"^non-finite logits at step 1, pairs \['p\d', 'p\d'\]$"):
        trainer.train(recipe)


def test_a_checkpoint_from_another_global_batch_is_refused_naming_both(tmp_path, tiny_llama, pairs_file):
    """Two processes with the same per-device batch make twice the pairs per step: resuming their checkpoint with one
    process would silently change the schedule. The state records it; a mismatch is refused."""
    recipe = recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=3", "train.save_steps=1")
    trainer.train(recipe)
    state_file = tmp_path / "run" / "train" / "checkpoint-3" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["schedule"] == {"global_batch_pairs": 2, "total_steps": 3, "num_processes": 1}
    state["schedule"] = {"global_batch_pairs": 4, "total_steps": 3, "num_processes": 2}  # as a 2-process launch wrote
    state_file.write_text(json.dumps(state))
    with pytest.raises(
        WpoError,
        match=r"checkpoint-3 was written with 4 pairs per step and 3 steps, but this launch "
        r"makes 2 pairs per step and 3 steps \(1 process\(es\)\); refusing to resume",
    ):
        trainer.train(recipe)


def test_micro_batches_deal_a_step_out_by_process_and_accumulation():
    """8 pairs, 2 per device, 2 accumulation, 2 processes: micro-batch k of process r starts at (k·2 + r)·2."""
    from wpo.training.schedule import micro_batches

    pairs = [10, 11, 12, 13, 14, 15, 16, 17]
    assert micro_batches(pairs, 2, 2, 2, 0) == [[10, 11], [14, 15]]
    assert micro_batches(pairs, 2, 2, 2, 1) == [[12, 13], [16, 17]]
    assert micro_batches(pairs, 4, 2, 1, 0) == [[10, 11, 12, 13], [14, 15, 16, 17]]
    assert micro_batches([10, 11, 12], 2, 2, 1, 0) == [[10, 11], [12]]  # a short last step of an epoch
    assert micro_batches([10, 11], 2, 2, 1, 0) == [[10, 11]]  # the empty tail is dropped, not an empty batch


def test_final_is_the_last_checkpoint_hard_linked_not_written_twice(tmp_path, tiny_llama, pairs_file):
    trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, "train.max_steps=2"))
    train_dir = tmp_path / "run" / "train"
    final, last = train_dir / "final" / "model.safetensors", train_dir / "checkpoint-2" / "model" / "model.safetensors"
    assert final.stat().st_ino == last.stat().st_ino
    assert json.loads((train_dir / "final" / "wpo_training.json").read_text())["total_steps"] == 2


@pytest.mark.parametrize("units", ["this CPU's", "bf16 units assumed"])
def test_each_training_in_a_process_gets_its_own_precision(
    tmp_path, tiny_llama, pairs_file, caplog, monkeypatch, units
):
    """fp32, then bf16, then fp32 again in one process (a notebook, a sweep over train.mixed_precision): each run
    computes in the precision its recipe asks for. bf16 autocasts the forward (the reference pass too, so step 1 sees
    z ≈ 0), keeps the weights and Adam state fp32, and follows the fp32 run's losses closely. On a CPU without bf16
    units it falls back to fp32 with one line; "assumed" runs the bf16 path on any CPU (slowly without the units,
    with the same numerics), so both paths are tested on every machine."""
    if units == "bf16 units assumed":
        monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    has_units = precision.cpu_has_bf16_units()
    common = ("train.max_steps=3", "train.learning_rate=1e-4")
    with caplog.at_level(logging.INFO, logger="wpo.training"):
        trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, run="fp32"))
        result = trainer.train(
            recipe_for(tmp_path, tiny_llama, pairs_file, *common, "train.mixed_precision=bf16", run="bf16")
        )
        trainer.train(recipe_for(tmp_path, tiny_llama, pairs_file, *common, run="fp32-again"))
    precisions = [line.rsplit("mixed precision: ", 1)[1] for line in caplog.messages if "mixed precision: " in line]
    assert precisions == ["no", "bf16" if has_units else "no", "no"]
    fp32, bf16, fp32_again = (
        read_metrics(tmp_path / run / "train" / "metrics.jsonl") for run in ("fp32", "bf16", "fp32-again")
    )
    assert fp32_again == [
        dict(row, tokens_per_second=a["tokens_per_second"], step_seconds=a["step_seconds"])
        for row, a in zip(fp32, fp32_again, strict=True)
    ]
    if has_units:
        assert bf16[0]["logps_chosen"] != fp32[0]["logps_chosen"]  # bf16 really computed: the last bits differ
        assert abs(bf16[0]["reward_margin"]) < 1e-2  # z ≈ 0 at step 1: reference and policy in the same precision
        assert bf16[0]["loss"] == pytest.approx(bf16[0]["weight_mean"] * math.log(2), rel=1e-2)
    else:
        assert "this CPU has no bf16 instructions (AVX512-BF16): training in fp32" in caplog.text
        assert [r["loss"] for r in bf16] == [r["loss"] for r in fp32]
    for a, b in zip(fp32, bf16, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02)
    weights = load_file(str(result.final_dir / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    optimizer = load_file(str(tmp_path / "bf16" / "train" / "checkpoint-3" / "optimizer.safetensors"))
    assert {t.dtype for t in optimizer.values()} == {torch.float32}


def test_metrics_go_to_trackio_offline(tmp_path, tiny_llama, pairs_file):
    """train.report_to: [tensorboard, trackio] logs every row to trackio's local store too (no server, no network)."""
    import os
    import subprocess
    import sys

    recipe = train_recipe(
        tmp_path / "r.yaml",
        tiny_llama,
        pairs_file,
        output_dir=tmp_path / "run",
        stages=None,
        logging_steps=1,
        report_to=["tensorboard", "trackio"],
    )
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "WPO_LOG_LEVEL": "WARNING"}
    trained = subprocess.run(
        [sys.executable, "-m", "wpo", "train", str(recipe)], capture_output=True, text=True, env=env
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    read = (
        "import json; from trackio.sqlite_storage import SQLiteStorage; "
        "print(json.dumps(SQLiteStorage.get_logs('wpo', 'run-seed3'), default=str))"
    )
    logs = json.loads(
        subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, env=env, check=True).stdout
    )
    rows = read_metrics(tmp_path / "run" / "train" / "metrics.jsonl")
    assert [log["step"] for log in logs] == [1, 2]
    assert [log["train/loss"] for log in logs] == pytest.approx([row["loss"] for row in rows])
    assert list((tmp_path / "run" / "train" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("kind", ["llama", "gemma2", "llama-lora"])
@pytest.mark.parametrize("chunk_size", [0, 5])
def test_sharing_each_prompt_gives_the_padded_layouts_statistics_and_gradients(kind, chunk_size, request, pairs_file):
    """One row per micro-batch, each prompt computed once for both answers (SDPA on Llama, eager attention and the
    soft-caps on Gemma-2, LoRA): the same log-probs, WPO alignments and gradients as two padded rows per pair.
    Gemma-2's sliding window, shorter than the sequences, is refused, then widened so both layouts see everything."""
    from wpo.training.forward import pair_statistics, prompt_sharing_problem
    from wpo.training.tokenize import collate_pairs

    model_dir = request.getfixturevalue(f"tiny_{kind.removesuffix('-lora')}")
    model = tiny_model(model_dir, ["q_proj", "v_proj", "down_proj"] if kind.endswith("lora") else None)
    assert model.config._attn_implementation == ("eager" if kind == "gemma2" else "sdpa")
    if kind == "gemma2":
        assert prompt_sharing_problem(model, 64) == (
            "it has 16-token sliding-window attention, shorter than train.max_length 64"
        )
        model.config.sliding_window = 64
    assert prompt_sharing_problem(model, 64) is None
    tokens, tokenizer = tokenized_pairs(model_dir, pairs_file)
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for share_prompts in (False, True):
        batch = collate_pairs(tokens.pairs[:3], tokenizer.pad_token_id, share_prompts=share_prompts)
        chosen, rejected = pair_statistics(model, batch, loss_chunk_size=chunk_size)
        objective = (chosen.logps - rejected.logps).sum() + 10.0 * (chosen.aligned_logps + rejected.aligned_logps).sum()
        results[share_prompts] = (chosen, rejected, torch.autograd.grad(objective, trainable))
    (chosen, rejected, grads), (padded_chosen, padded_rejected, padded_grads) = results[True], results[False]
    for actual, expected in ((chosen, padded_chosen), (rejected, padded_rejected)):
        assert_close(actual.logps, expected.logps, rtol=1e-5, atol=1e-5)
        assert_close(actual.aligned_logps, expected.aligned_logps, rtol=1e-5, atol=1e-6)
        assert actual.token_counts.tolist() == expected.token_counts.tolist()
    for grad, padded_grad in zip(grads, padded_grads, strict=True):
        assert_close(grad, padded_grad, rtol=1e-4, atol=1e-4 * padded_grad.abs().max().item())
