"""The paper's comparison on the quickstart, over seeds: WPO vs DPO on the same pairs, and one round vs two.

For each seed (which changes sampling and the training order): `wpo run recipes/quickstart.yaml` (sample → train,
eval on the held-out prompts), `wpo run recipes/quickstart-dpo.yaml` on that run's pairs, and a second WPO round on
top of the first (`rounds=2`, evaluated by `wpo eval` with `eval.model` set to the round-2 model). Every arm is
measured against the same base answers (greedy, so the same in every seed). Finished runs are skipped on a rerun.

Prints, per measure: the base, each arm's mean over seeds with its spread (standard deviation of the per-seed
means), and each arm's difference from one-round WPO paired by seed and prompt, with a percentile-bootstrap 95% CI
(prompts resampled within each seed). Writes the table to `<root>/comparison.md` and the figures to
`<root>/comparison.json`.

Run: python benchmarks/quickstart_comparison.py [--seeds 1,2,3] [--root runs/compare]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from wpo.sweep import stratified_ci

ARMS = ("wpo", "dpo", "wpo-2-rounds")


def wpo(*args: str) -> None:
    command = [sys.executable, "-m", "wpo", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def run_seed(seed: int, root: Path) -> dict[str, Path]:
    runs = {arm: root / f"{arm}-seed{seed}" for arm in ARMS}
    rounds = [f"seed={seed}", f"output_dir={runs['wpo']}"]
    wpo("run", "recipes/quickstart.yaml", *rounds, "stages=[sample, score, pair, train, eval]")
    wpo("run", "recipes/quickstart-dpo.yaml", f"seed={seed}", f"output_dir={runs['dpo']}",
        f"train.pairs={runs['wpo'] / 'pair' / 'pairs.jsonl'}")  # fmt: skip
    wpo("run", "recipes/quickstart.yaml", *rounds, "rounds=2", "stages=[sample, score, pair, train]")
    wpo(
        "eval",
        "recipes/quickstart.yaml",
        f"seed={seed}",
        f"output_dir={runs['wpo-2-rounds']}",
        f"eval.model={runs['wpo'] / 'round-2' / 'train' / 'final'}",
        "eval.generator_name=smollm2-135m-instruct-wpo-r2",
    )
    return runs


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "eval" / "measures.jsonl").read_text(encoding="utf-8").splitlines()]


def compare(runs_by_seed: dict[int, dict[str, Path]]) -> dict:
    rows = {seed: {arm: read_rows(path) for arm, path in runs.items()} for seed, runs in runs_by_seed.items()}
    first = next(iter(rows.values()))["wpo"]
    names = [key.removesuffix("_base") for key in first[0] if key.endswith("_base")]
    table: dict = {"seeds": sorted(rows), "prompts": len(first), "measures": {}}
    for name in names:
        entry = {"base": float(np.mean([r[f"{name}_base"] for r in first]))}
        values = {arm: [np.array([r[f"{name}_trained"] for r in rows[s][arm]]) for s in rows] for arm in ARMS}
        for arm in ARMS:
            per_seed = [float(v.mean()) for v in values[arm]]
            entry[arm] = {"mean": float(np.mean(per_seed)), "sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1
                          else 0.0, "per_seed": per_seed}  # fmt: skip
            if arm != "wpo":
                differences = [a - w for a, w in zip(values[arm], values["wpo"], strict=True)]
                entry[arm]["minus_wpo"] = float(np.mean([d.mean() for d in differences]))
                entry[arm]["minus_wpo_ci95"] = stratified_ci(differences)
        base = [np.array([r[f"{name}_trained"] - r[f"{name}_base"] for r in rows[s]["wpo"]]) for s in rows]
        entry["wpo"]["minus_base_ci95"] = stratified_ci(base)
        table["measures"][name] = entry
    return table


def markdown(table: dict) -> str:
    lines = [f"{len(table['seeds'])} seeds ({', '.join(map(str, table['seeds']))}), {table['prompts']} held-out "
             "prompts; mean over seeds ± spread (SD of the per-seed means); differences paired by seed and prompt, "
             "95% bootstrap CI", "",
             "| measure | base | WPO | DPO | DPO − WPO | WPO 2 rounds | 2 rounds − WPO |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in table["measures"].items():
        digits = 1 if name in ("chrf", "length_chars") else 3

        def cell(arm: str) -> str:
            return f"{entry[arm]['mean']:.{digits}f} ± {entry[arm]['sd']:.{digits}f}"

        def diff(arm: str) -> str:
            low, high = entry[arm]["minus_wpo_ci95"]
            return f"{entry[arm]['minus_wpo']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"

        lines.append(f"| {name} | {entry['base']:.{digits}f} | {cell('wpo')} | {cell('dpo')} | {diff('dpo')} | "
                     f"{cell('wpo-2-rounds')} | {diff('wpo-2-rounds')} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--root", type=Path, default=Path("runs/compare"))
    args = parser.parse_args()
    runs = {seed: run_seed(seed, args.root) for seed in map(int, args.seeds.split(","))}
    table = compare(runs)
    (args.root / "comparison.json").write_text(json.dumps(table, indent=2), encoding="utf-8")
    text = markdown(table)
    (args.root / "comparison.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
