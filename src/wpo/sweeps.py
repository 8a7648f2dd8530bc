"""`wpo sweep`: every variant of a grid × every seed, with shared upstream work and paired statistics.

A variant is one combination of the grid's values; a run is a variant with a seed. Runs whose data stages (sample,
score, pair) would compute the same thing — same config hash for all three, e.g. variants that differ only in
`train.*` keys — share one data directory, `sweep/data-<hash>/`; each run then trains and evaluates in
`sweep/runs/<variant>-seed<seed>/` on those pairs. A multi-round recipe samples from its own policy every round, so
its runs share no data. Every run keeps its reference log-probs in `sweep/reference_cache/` (unless the recipe sets
`train.reference_cache_dir`), keyed by what determines them: runs that differ only in what acts after them (beta,
the loss, the learning rate) compute one reference pass between them. Every stage is skipped when already done, so a
killed sweep resumes where it stopped.

Outputs, under `<output_dir>/sweep/`:
- `runs.csv`: one row per run — the grid's values, the seed, every headline figure of its summary;
- `comparison.csv`: one row per variant and measure — the mean over seeds of the trained model's value with a 95% CI,
  and its difference from the baseline variant paired by seed and by prompt, with a 95% CI (a stratified bootstrap:
  prompts resampled within each seed);
- `comparison.png`: each measure's difference from the baseline, per variant, with its CI.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from wpo.config import Recipe, config_hash, load_recipe
from wpo.data.io import atomic_writer
from wpo.errors import ConfigError
from wpo.figures import MeasureRow, paired_measures, row_measure_names

log = logging.getLogger(__name__)
DATA_STAGES = ("sample", "score", "pair")
RESAMPLES = 10_000


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`KEY=V1,V2` items → `{KEY: [V1, V2]}` (values stay YAML text, read as overrides are)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r} is not of the form KEY=V1,V2")
        if key in grid:
            raise ConfigError(f"--grid names {key} twice")
        grid[key] = [value.strip() for value in values.split(",")]
    return grid


def parse_variants(items: list[str]) -> list[dict[str, str]]:
    """`KEY=V;KEY=V` items → one variant each: cells a grid cannot express (`train.weighting=wpo;
    train.normalize_weights=true` beside `train.weighting=none`). Every item sets the same keys."""
    found = []
    for item in items:
        pairs = [part.strip().partition("=") for part in item.split(";") if part.strip()]
        if not pairs or any(not sep or not key or not value for key, sep, value in pairs):
            raise ConfigError(f"--variant {item!r} is not of the form KEY=V;KEY=V")
        found.append({key.strip(): value.strip() for key, _, value in pairs})
    if found and any(variant.keys() != found[0].keys() for variant in found):
        keys = " | ".join(", ".join(variant) for variant in found)
        raise ConfigError(f"every --variant must set the same keys (they set: {keys})")
    return found


def variants(grid: dict[str, list[str]], explicit: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """The grid's combinations, each crossed with every explicit variant (when there are any)."""
    combinations = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return [{**cell, **combination} for cell in explicit or [{}] for combination in combinations]


def variant_name(variant: dict[str, str]) -> str:
    """A directory-safe name: `train.beta=0.1,train.weighting=none` → `beta-0.1_weighting-none`."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in variant.items()]
    return re.sub(r"[^\w.-]+", "-", "_".join(parts)) or "base"


def _data_key(recipe: Recipe) -> str:
    """What the data stages compute from: the sample stage's config (seed, model, prompts, settings) and the score
    and pair settings. Not their input files' fingerprints, which do not exist before the first run."""
    from wpo.pipeline import STAGE_REGISTRY

    sample = STAGE_REGISTRY["sample"].run_config(recipe)
    return config_hash(
        {"sample": sample, "score": recipe.score.hashed_settings(), "pair": recipe.pair.hashed_settings()}
    )[:16]


def plan(
    recipe_source: str | Path | dict[str, Any],
    overrides: list[str],
    variant_list: list[dict[str, str]],
    seeds: list[int],
) -> list[dict[str, Any]]:
    """Every run: its variant, seed, recipe for the data stages (or None when it shares nothing) and for its own."""
    base = load_recipe(recipe_source, overrides)
    sweep_dir = Path(base.output_dir) / "sweep"
    runs = []
    for variant in variant_list:
        for seed in seeds:
            settings = [*overrides, *(f"{k}={v}" for k, v in variant.items()), f"seed={seed}"]
            recipe = load_recipe(recipe_source, settings)
            if recipe.train.reference_cache_dir is None:  # one reference pass for the runs that compute the same
                settings.append(f"train.reference_cache_dir={sweep_dir / 'reference_cache'}")
            run_dir = sweep_dir / "runs" / f"{variant_name(variant)}-seed{seed}"
            own_stages = [stage for stage in recipe.stages if stage not in ("export",)]
            if recipe.rounds > 1 or not set(DATA_STAGES) <= set(recipe.stages):
                runs.append(
                    {
                        "variant": variant,
                        "seed": seed,
                        "data": None,
                        "run": load_recipe(
                            recipe_source, [*settings, f"output_dir={run_dir}", f"stages=[{', '.join(own_stages)}]"]
                        ),
                    }
                )
                continue
            data_dir = sweep_dir / f"data-{_data_key(recipe)}"
            data = load_recipe(recipe_source, [*settings, f"output_dir={data_dir}", "stages=[sample, score, pair]"])
            later = [stage for stage in own_stages if stage not in DATA_STAGES]
            run = load_recipe(
                recipe_source,
                [
                    *settings,
                    f"output_dir={run_dir}",
                    f"stages=[{', '.join(later)}]",
                    f"train.pairs={data_dir / 'pair' / 'pairs.jsonl'}",
                ],
            )
            runs.append({"variant": variant, "seed": seed, "data": data, "run": run})
    return runs


def run_sweep(
    recipe_source: str | Path | dict[str, Any],
    overrides: list[str],
    grid: dict[str, list[str]],
    seeds: list[int],
    baseline: dict[str, str] | None = None,
    explicit: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) every run of the plan, then write runs.csv, comparison.csv, comparison.png and the sweep's
    report.html (linking each run's own page, which `wpo run` wrote)."""
    from wpo.pipeline import run_pipeline

    if not grid and not explicit:
        raise ConfigError("wpo sweep needs at least one --grid KEY=V1,V2 or --variant KEY=V;KEY=V")
    overlap = set(grid) & set(explicit[0] if explicit else {})
    if overlap:
        raise ConfigError(f"--grid and --variant both set {', '.join(sorted(overlap))}")
    variant_list = variants(grid, explicit)
    keys = list(variant_list[0])
    chosen = variant_list[0] if baseline is None else next((v for v in variant_list if v == baseline), None)
    if chosen is None:
        raise ConfigError(
            f"--baseline must name one variant by every key ({', '.join(keys)}), got {baseline}; the variants: "
            + " | ".join(variant_name(v) for v in variant_list)
        )
    baseline = chosen
    runs = plan(recipe_source, overrides, variant_list, seeds)
    done_data: set[str] = set()
    for index, entry in enumerate(runs, 1):
        log.info("sweep: run %d of %d: %s, seed %d", index, len(runs), variant_name(entry["variant"]), entry["seed"])
        if entry["data"] is not None and entry["data"].output_dir not in done_data:
            run_pipeline(entry["data"])
            done_data.add(entry["data"].output_dir)
        entry["summary"] = run_pipeline(entry["run"])
    sweep_dir = Path(load_recipe(recipe_source, overrides).output_dir) / "sweep"
    rows = write_runs_csv(sweep_dir / "runs.csv", runs, keys)
    table = compare(runs, baseline)
    write_comparison(sweep_dir, table, keys)
    from wpo.reporting import write_sweep_page

    write_sweep_page(sweep_dir)
    shared = len({e["data"].output_dir for e in runs if e["data"] is not None})
    return {
        "runs": len(runs),
        "data_directories": shared,
        "runs_csv": str(sweep_dir / "runs.csv"),
        "comparison_csv": str(sweep_dir / "comparison.csv"),
        "rows": rows,
        "comparison": table,
    }


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's row: its scalar figures, and each held-out measure's means with their CIs as `_low`/`_high` columns."""
    scalars = {k: v for k, v in summary.items() if isinstance(v, int | float | bool) and k != "rounds"}
    for measure in paired_measures(summary):
        for key, value in measure.flat().items():
            if isinstance(value, list):
                scalars |= {f"{key}_low": value[0], f"{key}_high": value[1]}
    return {k: v for k, v in scalars.items() if not k.startswith(("wall", "total_wall"))}


def write_runs_csv(path: Path, runs: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    rows = [
        {
            **entry["variant"],
            "seed": entry["seed"],
            "run_dir": entry["run"].output_dir,
            **_headline(entry["summary"] or {}),
        }
        for entry in runs
    ]
    columns = [*keys, "seed", "run_dir", *sorted({c for row in rows for c in row} - {*keys, "seed", "run_dir"})]
    with atomic_writer(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _measures(run: Recipe) -> list[MeasureRow]:
    """A run's `measures.jsonl`, typed; empty before its eval ran."""
    path = Path(run.output_dir) / "eval" / "measures.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    names = row_measure_names(records[0]) if records else []
    return [MeasureRow.from_record(record, names) for record in records]


def stratified_ci(per_seed: list[np.ndarray], seed: int = 0) -> list[float]:
    """95% bootstrap CI of the mean over seeds of per-seed means: prompts resampled within each seed."""
    rng = np.random.default_rng(seed)
    means = np.zeros(RESAMPLES)
    for values in per_seed:
        means += values[rng.integers(0, values.size, size=(RESAMPLES, values.size))].mean(axis=1)
    return [float(v) for v in np.percentile(means / len(per_seed), [2.5, 97.5])]


def compare(runs: list[dict[str, Any]], baseline: dict[str, str]) -> list[dict[str, Any]]:
    """Per variant and measure: the trained model's mean over seeds with its CI, and the difference from the baseline
    variant paired by seed and prompt, with its CI."""
    by_variant: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for entry in runs:
        by_variant.setdefault(json.dumps(entry["variant"]), {})[entry["seed"]] = _measures(entry["run"])
    base_rows = by_variant[json.dumps(baseline)]
    first = next((rows for rows in base_rows.values() if rows), [])
    names = list(first[0].trained) if first else []
    table = []
    for key, per_seed in by_variant.items():
        seeds = sorted(seed for seed, rows in per_seed.items() if rows and base_rows.get(seed))
        for name in names:
            values = [np.array([row.trained[name] for row in per_seed[s]]) for s in seeds]
            if not values:
                continue
            differences = []
            for s in seeds:
                base_by_id = {row.id: row.trained[name] for row in base_rows[s]}
                differences.append(np.array([row.trained[name] - base_by_id[row.id] for row in per_seed[s]]))
            table.append(
                {
                    **json.loads(key),
                    "measure": name,
                    "seeds": len(seeds),
                    "mean": float(np.mean([v.mean() for v in values])),
                    "ci95": stratified_ci(values),
                    "sd_over_seeds": float(np.std([v.mean() for v in values], ddof=1)) if len(values) > 1 else 0.0,
                    "minus_baseline": float(np.mean([d.mean() for d in differences])),
                    "minus_baseline_ci95": stratified_ci(differences),
                }
            )
    return table


def write_comparison(sweep_dir: Path, table: list[dict[str, Any]], keys: list[str]) -> None:
    columns = [
        *keys,
        "measure",
        "seeds",
        "mean",
        "ci95_low",
        "ci95_high",
        "sd_over_seeds",
        "minus_baseline",
        "minus_baseline_ci95_low",
        "minus_baseline_ci95_high",
    ]
    with atomic_writer(sweep_dir / "comparison.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in table:
            writer.writerow(
                {
                    **{k: row[k] for k in keys},
                    "measure": row["measure"],
                    "seeds": row["seeds"],
                    "mean": row["mean"],
                    "ci95_low": row["ci95"][0],
                    "ci95_high": row["ci95"][1],
                    "sd_over_seeds": row["sd_over_seeds"],
                    "minus_baseline": row["minus_baseline"],
                    "minus_baseline_ci95_low": row["minus_baseline_ci95"][0],
                    "minus_baseline_ci95_high": row["minus_baseline_ci95"][1],
                }
            )
    _plot(sweep_dir / "comparison.png", table, keys)


def _plot(path: Path, table: list[dict[str, Any]], keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = list(dict.fromkeys(row["measure"] for row in table))
    figure, axes = plt.subplots(1, max(1, len(measures)), figsize=(3.2 * max(1, len(measures)), 3.2), squeeze=False)
    for axis, measure in zip(axes[0], measures, strict=False):
        rows = [row for row in table if row["measure"] == measure]
        labels = [variant_name({k: row[k] for k in keys}) for row in rows]
        centers = [row["minus_baseline"] for row in rows]
        errors = [
            [c - row["minus_baseline_ci95"][0] for c, row in zip(centers, rows, strict=True)],
            [row["minus_baseline_ci95"][1] - c for c, row in zip(centers, rows, strict=True)],
        ]
        axis.errorbar(range(len(rows)), centers, yerr=errors, fmt="o", capsize=4)
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
        axis.set_title(f"{measure} − baseline", fontsize=9)
    figure.tight_layout()
    with atomic_writer(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
