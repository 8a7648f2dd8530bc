"""`wpo sweep` on a tiny model: variants × seeds, data stages shared where their config is, paired comparisons."""

from __future__ import annotations

import csv
import json
import logging

import pytest
from helpers import builtin, run_wpo, write_lines

import wpo
from wpo.sweeps import parse_grid, parse_variants, variant_name, variants


def tiny_recipe(tmp_path, tiny_llama) -> dict:
    return {
        "output_dir": str(tmp_path / "out"),
        "stages": ["sample", "score", "pair", "train", "eval"],
        "model": {"name_or_path": str(tiny_llama)},
        "sample": {
            "prompts": str(write_lines(tmp_path / "train.jsonl", builtin("ifeval-train.jsonl")[:4])),
            "n": 2,
            "max_new_tokens": 6,
            "temperature": 1.0,
            "offpolicy_fields": ["reference"],
        },
        "score": {"scorer": "python", "function": "wpo.tasks.ifeval:reward"},
        "pair": {"length_unit": "characters"},
        "train": {
            "per_device_batch_size": 2,
            "max_length": 160,
            "max_prompt_length": 128,
            "max_steps": 2,
            "learning_rate": 1e-3,
        },
        "eval": {
            "prompts": str(write_lines(tmp_path / "heldout.jsonl", builtin("ifeval-heldout.jsonl")[:3])),
            "compare_to": "base_model",
            "reward": "wpo.tasks.ifeval:reward",
            "judge": "python",
            "function": "wpo.tasks.ifeval:content_preference",
            "max_new_tokens": 6,
            "temperature": 1.0,
        },
    }


def test_a_sweep_shares_sampling_and_pairs_its_comparisons(tmp_path, tiny_llama, caplog):
    recipe = tiny_recipe(tmp_path, tiny_llama)
    with caplog.at_level(logging.INFO, logger="wpo.training.reference_logps"):
        result = wpo.sweep(
            recipe, grid={"train.weighting": ["wpo", "none"]}, seeds=[1, 2], baseline={"train.weighting": "wpo"}
        )
    sweep_dir = tmp_path / "out" / "sweep"
    assert result["runs"] == 4 and result["data_directories"] == 2  # changing train.* keys never samples again
    assert len(list(sweep_dir.glob("data-*/sample/candidates.jsonl"))) == 2
    assert not list((sweep_dir / "runs").glob("*/sample"))
    # one reference pass per seed's pairs, in the sweep's cache: the DPO run reads the WPO run's
    assert len(list((sweep_dir / "reference_cache").glob("*.safetensors"))) == 2
    assert [m.split(":")[1].split()[0] for m in caplog.messages if m.startswith("reference log-probs")] == [
        "computed",
        "computed",
        "read",
        "read",
    ]
    assert not list((sweep_dir / "runs").glob("*/train/reference_cache"))
    rows = list(csv.DictReader((sweep_dir / "runs.csv").open()))
    assert [(r["train.weighting"], r["seed"]) for r in rows] == [
        ("wpo", "1"),
        ("wpo", "2"),
        ("none", "1"),
        ("none", "2"),
    ]
    assert all(r["reward_delta"] and r["length_controlled_winrate"] for r in rows)

    table = list(csv.DictReader((sweep_dir / "comparison.csv").open()))
    measures = {r["measure"] for r in table}
    assert {"reward", "chrf", "length_chars", "distinct_2"} <= measures
    for row in table:
        if row["train.weighting"] == "wpo":  # the baseline against itself: exactly zero, no spread
            assert float(row["minus_baseline"]) == 0.0 == float(row["minus_baseline_ci95_low"])
    # the paired difference by hand, for one measure: per seed, per prompt, DPO's value minus WPO's, averaged
    by_run = {}
    for weighting in ("wpo", "none"):
        for seed in (1, 2):
            path = sweep_dir / "runs" / f"{variant_name({'train.weighting': weighting})}-seed{seed}" / "eval"
            by_run[weighting, seed] = [json.loads(line) for line in (path / "measures.jsonl").read_text().splitlines()]
    expected = (
        sum(
            sum(
                n["length_chars_trained"] - w["length_chars_trained"]
                for n, w in zip(by_run["none", s], by_run["wpo", s], strict=True)
            )
            / 3
            for s in (1, 2)
        )
        / 2
    )
    (dpo_length,) = [r for r in table if r["train.weighting"] == "none" and r["measure"] == "length_chars"]
    assert float(dpo_length["minus_baseline"]) == pytest.approx(expected)
    assert (sweep_dir / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (sweep_dir / "report.html").read_text(encoding="utf-8")  # the sweep's page links every run's page
    for weighting in ("wpo", "none"):
        for seed in (1, 2):
            run_page = f"runs/{variant_name({'train.weighting': weighting})}-seed{seed}/report.html"
            assert f'href="{run_page}"' in page and (sweep_dir / run_page).is_file()

    manifests = sorted(sweep_dir.rglob("manifest.json"))
    written = {path: path.stat().st_mtime_ns for path in manifests}
    again = wpo.sweep(recipe, grid={"train.weighting": ["wpo", "none"]}, seeds=[1, 2])  # a rerun resumes: all done
    assert again["runs"] == 4 and {path: path.stat().st_mtime_ns for path in manifests} == written


def test_sweep_arguments_are_checked(tmp_path, tiny_llama):
    with pytest.raises(wpo.ConfigError, match=r"--grid 'train.beta' is not of the form KEY=V1,V2"):
        parse_grid(["train.beta"])
    recipe = tiny_recipe(tmp_path, tiny_llama)
    with pytest.raises(wpo.ConfigError, match=r"--baseline must name one variant by every key \(train.beta\), got"):
        wpo.sweep(recipe, grid={"train.beta": ["0.1", "0.2"]}, seeds=[1], baseline={"train.beta": "0.3"})
    with pytest.raises(wpo.ConfigError, match=r"--grid and --variant both set train.beta"):
        wpo.sweep(recipe, grid={"train.beta": ["0.1"]}, seeds=[1], variants=[{"train.beta": "0.2"}])
    result = run_wpo("sweep", str(tmp_path / "r.yaml"), "--grid", "train.beta=0.1", "--baseline", "train.beta")
    assert result.returncode == 2 and "--baseline 'train.beta' is not of the form KEY=V" in result.stderr
    with pytest.raises(wpo.ConfigError, match=r"train.bta: unknown key"):
        wpo.sweep(recipe, grid={"train.bta": ["0.1"]}, seeds=[1])
    result = run_wpo("sweep", str(tmp_path / "missing.yaml"), "--grid", "train.beta=0.1,0.2")
    assert result.returncode == 2 and "recipe" in result.stderr and "does not exist" in result.stderr


def test_explicit_variants_are_cells_a_grid_cannot_express():
    cells = parse_variants(["train.weighting=none", "train.weighting=wpo; train.normalize_weights=true"][:1])
    assert cells == [{"train.weighting": "none"}]
    cells = parse_variants(
        ["train.weighting=none;train.normalize_weights=false", "train.weighting=wpo;train.normalize_weights=true"]
    )
    assert cells == [
        {"train.weighting": "none", "train.normalize_weights": "false"},
        {"train.weighting": "wpo", "train.normalize_weights": "true"},
    ]
    crossed = variants({"sample.offpolicy_fields": ["[]", "[reference]"]}, cells)
    assert [variant_name(v) for v in crossed] == [
        "weighting-none_normalize_weights-false_offpolicy_fields--",
        "weighting-none_normalize_weights-false_offpolicy_fields--reference-",
        "weighting-wpo_normalize_weights-true_offpolicy_fields--",
        "weighting-wpo_normalize_weights-true_offpolicy_fields--reference-",
    ]
    with pytest.raises(
        wpo.ConfigError, match=r"every --variant must set the same keys \(they set: train.weighting \| "
    ):
        parse_variants(["train.weighting=none", "train.weighting=wpo;train.normalize_weights=true"])
    with pytest.raises(wpo.ConfigError, match=r"--variant 'train.beta' is not of the form KEY=V;KEY=V"):
        parse_variants(["train.beta"])
