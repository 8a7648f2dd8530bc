"""WPO against DPO at the quickstart's scale, as the paper ablates it: the candidate pool (on-policy samples only, or
hybrid: on-policy plus the reference answers) crossed with the weighting (none = DPO, wpo, wpo normalized to mean 1
per step), plus DPO at the learning rate scaled by WPO's mean weight; each over 3 seeds, every held-out measure
paired by seed and prompt against DPO on the hybrid pool.

    python benchmarks/wpo_vs_dpo.py --run           # runs the sweep under runs/wpo-vs-dpo (about 1 h on 2 cores)
    python benchmarks/wpo_vs_dpo.py --sweep-dir runs/wpo-vs-dpo/sweep   # the tables of a finished sweep

Prints two Markdown tables: the held-out measures of each cell (mean over seeds, and the paired difference from the
baseline with its 95% CI), and what the WPO weights were in each cell (mean, effective sample size as a share of the
pairs, share clamped at 1, mean by pair kind), read from each run's train manifest.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

POOL, WEIGHTING, NORMALIZE, LR = (
    "sample.offpolicy_fields",
    "train.weighting",
    "train.normalize_weights",
    "train.learning_rate",
)
# WPO's mean weight over the quickstart's training (seed 1, hybrid pool): 0.479, so DPO at 1e-5 x 0.479.
CELLS = [
    ("[]", "none", "false", "1.0e-5"),
    ("[]", "wpo", "false", "1.0e-5"),
    ("[]", "wpo", "true", "1.0e-5"),
    ("[reference]", "none", "false", "1.0e-5"),
    ("[reference]", "wpo", "false", "1.0e-5"),
    ("[reference]", "wpo", "true", "1.0e-5"),
    ("[reference]", "none", "false", "4.8e-6"),
]
BASELINE = CELLS[3]
MEASURES = ["reward", "constraint_accuracy", "chrf", "length_chars", "distinct_2"]


def sweep_command(output_dir: str) -> list[str]:
    command = ["wpo", "sweep", "recipes/quickstart.yaml", f"output_dir={output_dir}", "--seeds", "1,2,3"]
    for pool, weighting, normalize, lr in CELLS:
        command += ["--variant", f"{POOL}={pool};{WEIGHTING}={weighting};{NORMALIZE}={normalize};{LR}={lr}"]
    for key, value in zip((POOL, WEIGHTING, NORMALIZE, LR), BASELINE, strict=True):
        command += ["--baseline", f"{key}={value}"]
    return command


def label(pool: str, weighting: str, normalize: str, lr: str) -> str:
    kind = {"none": "DPO", "wpo": "WPO"}[weighting] + (" normalized" if normalize == "true" else "")
    rate = "" if lr == "1.0e-5" else f", lr {float(lr):.1e}"
    return f"{'hybrid' if 'reference' in pool else 'on-policy'} · {kind}{rate}"


def cell_of(row: dict[str, str]) -> tuple[str, str, str, str]:
    return row[POOL], row[WEIGHTING], row[NORMALIZE], row[LR]


def measures_table(sweep: Path) -> list[str]:
    by_cell: dict[tuple, dict[str, dict[str, str]]] = defaultdict(dict)
    with (sweep / "comparison.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_cell[cell_of(row)][row["measure"]] = row
    lines = [
        "| cell | " + " | ".join(MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for cell in CELLS:
        cells = []
        for measure in MEASURES:
            row = by_cell.get(cell, {}).get(measure)
            if row is None:
                cells.append("—")
                continue
            digits = 1 if measure in ("chrf", "length_chars") else 3
            mean, diff = float(row["mean"]), float(row["minus_baseline"])
            low, high = float(row["minus_baseline_ci95_low"]), float(row["minus_baseline_ci95_high"])
            shown = f"{mean:.{digits}f}"
            if cell != BASELINE:
                shown += f" ({diff:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}])"
            cells.append(shown)
        lines.append(f"| {label(*cell)} | " + " | ".join(cells) + " |")
    return lines


def weights_table(sweep: Path) -> list[str]:
    figures: dict[tuple, list[dict]] = defaultdict(list)
    with (sweep / "runs.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            manifest = sweep / "runs" / Path(row["run_dir"]).name / "train" / "manifest.json"
            weights = json.loads(manifest.read_text(encoding="utf-8")).get("weights") or {}
            figures[cell_of(row)].append({**weights, "reward_delta": float(row.get("reward_delta") or "nan")})
    lines = [
        "| cell | reward gain over the base (mean of seeds) | weight mean | ESS share | clamped share | mean weight by "
        "pair kind |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for cell in CELLS:
        runs = figures.get(cell, [])
        if not runs:
            continue

        def mean(key: str, runs: list[dict] = runs) -> float:
            return sum(run.get(key, float("nan")) for run in runs) / len(runs)

        kinds: dict[str, list[float]] = defaultdict(list)
        for run in runs:
            for kind, value in (run.get("weight_mean_by_source") or {}).items():
                kinds[kind].append(value)
        by_kind = ", ".join(f"{kind} {sum(v) / len(v):.2f}" for kind, v in sorted(kinds.items()))
        lines.append(
            f"| {label(*cell)} | {mean('reward_delta'):+.3f} | {mean('weight_mean'):.3f} | "
            f"{mean('weight_ess_share'):.3f} | {mean('weight_clamped_share'):.3f} | {by_kind} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run (or resume) the sweep first")
    parser.add_argument("--output-dir", default="runs/wpo-vs-dpo")
    parser.add_argument("--sweep-dir", help="a finished sweep's directory (default: OUTPUT_DIR/sweep)")
    args = parser.parse_args()
    if args.run:
        wpo = str(Path(sys.executable).with_name("wpo"))
        subprocess.run([wpo, *sweep_command(args.output_dir)[1:]], check=True)
    sweep = Path(args.sweep_dir or Path(args.output_dir) / "sweep")
    print(f"baseline: {label(*BASELINE)}; each cell: mean over seeds (paired difference from the baseline [95% CI])\n")
    print("\n".join(measures_table(sweep)))
    print("\nWhat the weights were (train manifests; DPO's weights are 1 by definition)\n")
    print("\n".join(weights_table(sweep)))


if __name__ == "__main__":
    main()
