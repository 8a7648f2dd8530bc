"""The quickstart end to end: its previous configuration (transformers in fp32 for sampling and evaluation, two
padded rows per pair in training, a checkpoint every 5 steps) against its defaults (batched llama.cpp on an F16 copy
of the policy, each pair's prompt computed once, a checkpoint at the end), wall time per stage and the held-out
measures, in one run.

Both arms run `wpo run recipes/quickstart.yaml` from an empty output directory with the same seed; they differ only
in `sample.backend` and `sample.batch_size`, `eval.backend` and `eval.batch_size` (llama.cpp decodes a batch as one
batch of sequences), `train.share_prompts` and `train.save_steps`. (Both batch pairs by length in training's
micro-batches and the reference pass; export links eval's F16 conversion where eval made one, so only in the
defaults.)
First-use work both arms share or that a machine does once — dequantizing the embedded GGUF, the F16 copy of the
base policy — is done before timing and printed apart. Prints each stage's wall time (from the run's summary), the
total, and the ratio defaults / previous; then each held-out measure of both trained models with its 95% CI, and
whether each arm's mean lies inside the other's CI (the issue's "same quality" test).

Run: python benchmarks/quickstart_wall_time.py [--root runs/wall-time] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wpo.config import load_recipe
from wpo.models import resolve_model_path
from wpo.sampling.llamacpp_backend import policy_gguf

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
ARMS = {  # output directory under --root: its overrides of the recipe
    "previous": [
        "sample.backend=transformers",
        "sample.batch_size=8",
        "eval.backend=transformers",
        "eval.batch_size=16",
        "train.share_prompts=never",
        "train.save_steps=5",
    ],
    "defaults": [],
}


def run(arm: str, overrides: list[str], root: Path, seed: int) -> tuple[float, dict]:
    output_dir = root / arm
    shutil.rmtree(output_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "wpo",
        "run",
        str(QUICKSTART),
        f"output_dir={output_dir}",
        f"seed={seed}",
        *overrides,
    ]
    print(f"[{arm}] +", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    return seconds, json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/wall-time"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    recipe = load_recipe(str(QUICKSTART), [])
    started = time.perf_counter()
    policy_gguf(recipe)  # the dequantized HF copy of the embedded GGUF and its F16 GGUF
    print(
        f"first use (shared, once per machine): dequantize + F16 copy of the base in "
        f"{time.perf_counter() - started:.1f} s; {resolve_model_path(recipe.model.name_or_path)}"
    )
    results = {arm: run(arm, overrides, args.root, args.seed) for arm, overrides in ARMS.items()}
    (previous_time, previous), (default_time, default) = results.values()

    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end; seed {args.seed}")
    print(f"{'stage':<8} {'previous s':>11} {'defaults s':>11} {'ratio':>6}")
    for stage, seconds in previous["wall_seconds"].items():
        new = default["wall_seconds"][stage]
        print(f"{stage:<8} {seconds:>11.1f} {new:>11.1f} {new / seconds if seconds else float('nan'):>6.2f}")
    print(
        f"{'total':<8} {previous_time:>11.1f} {default_time:>11.1f} {default_time / previous_time:>6.2f}"
        "   (process wall time, startup included)"
    )

    print(f"\n{'held-out measure':<20} {'previous [95% CI]':>26} {'defaults [95% CI]':>26}  each inside the other's CI")
    for name in ("reward", "constraint_accuracy", "chrf", "length_chars", "distinct_2"):
        a, b = previous[f"{name}_trained"], default[f"{name}_trained"]
        (a_low, a_high), (b_low, b_high) = previous[f"{name}_trained_ci95"], default[f"{name}_trained_ci95"]
        inside = a_low <= b <= a_high and b_low <= a <= b_high
        print(f"{name:<20} {a:>9.3f} [{a_low:8.3f}, {a_high:8.3f}] {b:>9.3f} [{b_low:8.3f}, {b_high:8.3f}]  {inside}")
    print(f"verdict 'better': previous {previous['better']}, defaults {default['better']}")


if __name__ == "__main__":
    main()
