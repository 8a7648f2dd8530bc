"""The quickstart's training with plain AdamW and with the memory options: do the training curves agree?

Trains `recipes/quickstart.yaml` on one set of pairs (`--pairs`, by default a quickstart run's) three ways, each
in its own process, and prints the curves side by side with each process's peak resident set:
- `plain`: the recipe as shipped (AdamW, gradient clipping at 1.0, 4 pairs x 2 accumulated micro-batches);
- `noclip`: the same without clipping (`train.max_grad_norm: null`), which the optimizer in backward requires;
- `lean`: `train.optimizer: adamw_8bit`, `train.optimizer_in_backward: true`, no clipping, 8 pairs x 1 micro-batch
  (the same 8 pairs per step: the gradient is the same sum).
`plain` vs `noclip` is the cost of giving up clipping; `noclip` vs `lean` is the cost of 8-bit moments (the optimizer
in backward computes the plain step exactly). A finished run is not trained again (wpo skips it).

Run: python benchmarks/optimizer_curves.py --pairs runs/quickstart/pair/pairs.jsonl [--root runs/opt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "plain": [],
    "noclip": ["train.max_grad_norm=null"],
    "lean": [
        "train.optimizer=adamw_8bit",
        "train.optimizer_in_backward=true",
        "train.max_grad_norm=null",
        "train.per_device_batch_size=8",
        "train.gradient_accumulation_steps=1",
    ],
}
CURVES = ("loss", "reward_margin", "logps_chosen", "logps_rejected", "weight_mean")


def train(variant: str, pairs: str, root: Path) -> float | None:
    """Train one variant; the process's peak resident set in MiB (None when it was already trained)."""
    run = root / f"opt-{variant}"
    if (run / "train" / "final").is_dir():
        return None
    command = [
        sys.executable,
        "-m",
        "wpo",
        "train",
        "recipes/quickstart.yaml",
        f"train.pairs={pairs}",
        f"output_dir={run}",
        *VARIANTS[variant],
    ]
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{variant}: training failed")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--root", type=Path, default=Path("runs"))
    args = parser.parse_args()
    peaks = {variant: train(variant, args.pairs, args.root) for variant in VARIANTS}
    rows = {
        variant: [json.loads(line) for line in (args.root / f"opt-{variant}" / "train" / "metrics.jsonl").open()]
        for variant in VARIANTS
    }
    print("peak RSS MiB: " + ", ".join(f"{v} {p:.0f}" if p else f"{v} (trained before)" for v, p in peaks.items()))
    print("| step | " + " | ".join(f"{name} {v}" for name in ("loss", "reward_margin") for v in VARIANTS) + " |")
    print("|---:|" + "---:|" * (2 * len(VARIANTS)))
    for step, group in enumerate(zip(*rows.values(), strict=True), 1):
        cells = [f"{row[name]:.4f}" for name in ("loss", "reward_margin") for row in group]
        print(f"| {step} | " + " | ".join(cells) + " |")
    for a, b in (("plain", "noclip"), ("noclip", "lean"), ("plain", "lean")):
        worst = {name: max(abs(x[name] - y[name]) for x, y in zip(rows[a], rows[b], strict=True)) for name in CURVES}
        print(f"{a} vs {b}, largest difference over the steps: " + ", ".join(f"{k} {v:.4f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
