"""The paper's comparison on the quickstart, over seeds: WPO vs DPO on the same pairs, and one round vs two.

For each seed (which changes sampling and the training order): `wpo run recipes/quickstart.yaml` (sample → train,
eval on the held-out prompts), `wpo run recipes/quickstart-dpo.yaml` on that run's pairs, and a second WPO round on
top of the first (`rounds=2`, evaluated by `wpo eval` with `eval.model` set to the round-2 model). Every arm is
measured against the same base answers (greedy, so the same in every seed). Finished runs are skipped on a rerun.

Prints, per measure: the base, each arm's mean over seeds with its spread (standard deviation of the per-seed
means), and each arm's difference from one-round WPO paired by seed and prompt, with a percentile-bootstrap 95% CI
(prompts resampled within each seed). Writes the table to `<root>/comparison.md` and the figures to
`<root>/comparison.json`.

Run: python benchmarks/quickstart_comparison.py [--seeds 1,2,3] [--arms wpo,dpo,wpo-2-rounds] [--root runs/compare]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from wpo.sweeps import stratified_ci

ARMS = ("wpo", "dpo", "wpo-2-rounds")


def wpo(*args: str) -> None:
    command = [sys.executable, "-m", "wpo", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def run_arm(arm: str, seed: int, root: Path) -> Path:
    """One arm of one seed; every arm but WPO reads the WPO run of the same seed (its pairs, or its first round)."""
    run = root / f"{arm}-seed{seed}"
    first = [f"seed={seed}", f"output_dir={root / f'wpo-seed{seed}'}"]
    if arm == "wpo":
        wpo("run", "recipes/quickstart.yaml", *first, "stages=[sample, score, pair, train, eval]")
    elif arm == "dpo":
        wpo(
            "run",
            "recipes/quickstart-dpo.yaml",
            f"seed={seed}",
            f"output_dir={run}",
            f"train.pairs={root / f'wpo-seed{seed}' / 'pair' / 'pairs.jsonl'}",
        )
    else:
        wpo("run", "recipes/quickstart.yaml", *first, "rounds=2", "stages=[sample, score, pair, train]")
        wpo(
            "eval",
            "recipes/quickstart.yaml",
            f"seed={seed}",
            f"output_dir={run}",
            f"eval.model={root / f'wpo-seed{seed}' / 'round-2' / 'train' / 'final'}",
            "eval.generator_name=smollm2-135m-instruct-wpo-r2",
        )
    return run


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "eval" / "measures.jsonl").read_text(encoding="utf-8").splitlines()]


def compare(runs_by_seed: dict[int, dict[str, Path]]) -> dict:
    rows = {seed: {arm: read_rows(path) for arm, path in runs.items()} for seed, runs in runs_by_seed.items()}
    arms = list(next(iter(runs_by_seed.values())))
    first = next(iter(rows.values()))["wpo"]
    names = [key.removesuffix("_base") for key in first[0] if key.endswith("_base")]
    table: dict = {"seeds": sorted(rows), "arms": arms, "prompts": len(first), "measures": {}}
    for name in names:
        entry = {"base": float(np.mean([r[f"{name}_base"] for r in first]))}
        values = {arm: [np.array([r[f"{name}_trained"] for r in rows[s][arm]]) for s in rows] for arm in arms}
        for arm in arms:
            per_seed = [float(v.mean()) for v in values[arm]]
            entry[arm] = {
                "mean": float(np.mean(per_seed)),
                "sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                "per_seed": per_seed,
            }
            if arm != "wpo":
                differences = [a - w for a, w in zip(values[arm], values["wpo"], strict=True)]
                entry[arm]["minus_wpo"] = float(np.mean([d.mean() for d in differences]))
                entry[arm]["minus_wpo_ci95"] = stratified_ci(differences)
        base = [np.array([r[f"{name}_trained"] - r[f"{name}_base"] for r in rows[s]["wpo"]]) for s in rows]
        entry["wpo"]["minus_base_ci95"] = stratified_ci(base)
        table["measures"][name] = entry
    return table


LABELS = {"wpo": "WPO", "dpo": "DPO", "wpo-2-rounds": "WPO 2 rounds"}


def markdown(table: dict) -> str:
    others = [arm for arm in table["arms"] if arm != "wpo"]
    header = ["measure", "base", "WPO", "WPO − base"]
    for arm in others:
        header += [LABELS[arm], f"{LABELS[arm]} − WPO"]
    lines = [
        f"{len(table['seeds'])} seeds ({', '.join(map(str, table['seeds']))}), {table['prompts']} held-out "
        "prompts; mean over seeds ± spread (SD of the per-seed means); differences paired by seed and prompt, "
        "95% bootstrap CI",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for name, entry in table["measures"].items():
        digits = 1 if name in ("chrf", "length_chars") else 3

        def cell(arm: str) -> str:
            return f"{entry[arm]['mean']:.{digits}f} ± {entry[arm]['sd']:.{digits}f}"

        def diff(value: float, bounds: list[float]) -> str:
            return f"{value:+.{digits}f} [{bounds[0]:+.{digits}f}, {bounds[1]:+.{digits}f}]"

        cells = [
            name,
            f"{entry['base']:.{digits}f}",
            cell("wpo"),
            diff(entry["wpo"]["mean"] - entry["base"], entry["wpo"]["minus_base_ci95"]),
        ]
        for arm in others:
            cells += [cell(arm), diff(entry[arm]["minus_wpo"], entry[arm]["minus_wpo_ci95"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--arms", default=",".join(ARMS), help="a subset of " + ", ".join(ARMS) + "; wpo always runs")
    parser.add_argument("--root", type=Path, default=Path("runs/compare"))
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    arms = ["wpo", *[arm for arm in ARMS[1:] if arm in args.arms.split(",")]]
    runs: dict[int, dict[str, Path]] = {seed: {} for seed in seeds}
    for arm in arms:  # arm by arm, so an interrupted comparison already holds every seed of the first arms
        for seed in seeds:
            runs[seed][arm] = run_arm(arm, seed, args.root)
    table = compare(runs)
    (args.root / "comparison.json").write_text(json.dumps(table, indent=2), encoding="utf-8")
    text = markdown(table)
    (args.root / "comparison.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
