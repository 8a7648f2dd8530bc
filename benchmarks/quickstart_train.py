"""The quickstart's training at its own shapes, fp32 against bf16, step by step: each step's time, its loss beside
fp32's, and the share of the matmul peak it reaches.

Every variant runs `wpo train recipes/quickstart.yaml` on the quickstart's own pairs file (its batch, its lengths,
its schedule) in a fresh subprocess, through the trainer's own `setup` and `train_step` (no checkpoint, no final
save): `fp32` is `train.mixed_precision=no`, `bf16` is `train.mixed_precision=bf16`, and `--variant NAME=KEY=V,...`
adds one with other settings (`--variant padded=train.mixed_precision=bf16,train.share_prompts=never`). Each child
sets malloc up as the `wpo` command does (`wpo.allocator`); the setting `malloc=glibc` leaves glibc's default
instead (`--variant fp32-glibc=train.mixed_precision=no,malloc=glibc`); `--variant
bf16-compiled=train.mixed_precision=bf16,train.compile=true` times compiled decoder layers (the setup's reference
pass and the first step include the compile). Printed per variant: setup (model load and reference pass) and step
times, wall and CPU; minor page faults per step; peak RSS; each step's loss and its relative difference from fp32's;
and the model FLOPs each step computed over its CPU time, against the per-core matmul peak measured in the same run
in the variant's precision (the FLOPs: 6 per body weight per token computed, a shared prompt once; 6 per output-layer
weight per response token, which is all the chunked loss projects; attention's scores and mix). The bf16 variants
need a CPU with bf16 units (AVX512-BF16 or AMX); without them they are skipped unless `--bf16-anywhere`.

Run: python benchmarks/quickstart_train.py --pairs runs/quickstart/pair/pairs.jsonl [--steps 12] [--profile DIR]
     [--variant NAME=KEY=V,KEY=V] [--only NAME ...] [--model DIR]
     (the pairs: `wpo run recipes/quickstart.yaml stages=[sample,score,pair]`; ~2 min on a 2-core Xeon with AMX)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import peak_memory
from train_step import OpProfile, matmul_peaks

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
VARIANTS = {"fp32": ["train.mixed_precision=no"], "bf16": ["train.mixed_precision=bf16"]}
GLIBC_MALLOC = "malloc=glibc"


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def step_flops(model, batch_rows: list[tuple[int, int, int]]) -> float:
    """Model FLOPs of one step's forward and backward: `batch_rows` holds (tokens computed, response tokens, the
    longest row's length) per micro-batch."""
    config = model.config
    d, layers = config.hidden_size, config.num_hidden_layers
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters() if p.ndim >= 2) - head  # the tied embedding is a lookup
    total = 0.0
    for tokens, responses, longest in batch_rows:
        attention = layers * 4 * d * longest / 2  # per token, causal half
        total += 6 * (body + attention) * tokens + 6 * head * responses
    return total


def child(name: str, settings: list[str], pairs: str, steps: int, profile: Path | None) -> dict:
    import torch

    from wpo import allocator
    from wpo.config import load_recipe
    from wpo.training import trainer
    from wpo.training.schedule import micro_batches
    from wpo.training.tokenize import collate_pairs

    malloc = allocator.keep_freed_memory() if GLIBC_MALLOC not in settings else "glibc's default"
    settings = [setting for setting in settings if setting != GLIBC_MALLOC]
    with tempfile.TemporaryDirectory() as output_dir:
        recipe = load_recipe(RECIPE, [f"output_dir={output_dir}", f"train.pairs={pairs}", *settings])
        started, started_cpu = time.perf_counter(), time.process_time()
        state = trainer.setup(recipe)
        setup_wall, setup_cpu = time.perf_counter() - started, time.process_time() - started_cpu
        cfg, schedule = state.cfg, state.schedule
        rows, profiler = [], OpProfile(profile)
        for step in range(min(steps, schedule.total_steps)):
            indices = sorted(schedule.step_indices(step), key=lambda i: state.tokens.pairs[i].token_count)
            shapes = []
            for batch in micro_batches(indices, cfg.per_device_batch_size, cfg.gradient_accumulation_steps, 1, 0):
                pairs_in = [state.tokens.pairs[i] for i in batch]
                collated = collate_pairs(pairs_in, state.pad_token_id, share_prompts=state.sharing.applies_to(pairs_in))
                responses = int((collated.labels != -100).sum())
                shapes.append((collated.token_count, responses, collated.input_ids.shape[-1]))
            if step == 1:
                profiler.start()  # the first step allocates the optimizer's state
            started, started_cpu, faults = time.perf_counter(), time.process_time(), minor_faults()
            row = trainer.train_step(state, step)
            wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
            rows.append(
                {
                    "wall": wall,
                    "cpu": cpu,
                    "faults": minor_faults() - faults,
                    "loss": row["loss"],
                    "flops": step_flops(state.model, shapes),
                }
            )
        profiler.stop()
        return {
            "variant": name,
            "malloc": malloc,
            "peak_mib": peak_memory.peak_mib(),
            "precision": state.accelerator.mixed_precision,
            "threads": torch.get_num_threads(),
            "setup_wall": setup_wall,
            "setup_cpu": setup_cpu,
            "steps": rows,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="the quickstart's pairs file (pair/pairs.jsonl)")
    parser.add_argument("--steps", type=int, default=12, help="steps per variant (the quickstart has 12)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KEY=V,KEY=V",
        help="one more variant: recipe overrides on top of the quickstart's",
    )
    parser.add_argument("--only", nargs="+", help="run only these variants (fp32 is the baseline of every ratio)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="each variant's op profile, steps 2 on")
    parser.add_argument("--bf16-anywhere", action="store_true", help="run bf16 without the units too (slowly)")
    parser.add_argument(
        "--model",
        help="another model in place of the quickstart's (a local directory): where the embedded SmolLM2 cannot be "
        "installed, a copy of its config with random weights times the same shapes",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.bf16_anywhere:
            from wpo.training import precision

            precision.cpu_has_bf16_units = lambda: True
        profile = args.profile / f"quickstart-{args.child}.txt" if args.profile else None
        print(json.dumps(child(args.child, json.loads(args.settings), args.pairs, args.steps, profile)))
        return

    from wpo.training import precision

    variants = dict(VARIANTS)
    for text in args.variant:
        name, _, overrides = text.partition("=")
        variants[name] = overrides.split(",") if overrides else []
    if args.model:
        variants = {name: [f"model.name_or_path={args.model}", *settings] for name, settings in variants.items()}
    if args.only:
        variants = {name: settings for name, settings in variants.items() if name in args.only or name == "fp32"}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    units = precision.cpu_has_bf16_units()
    peaks = matmul_peaks()
    print(
        f"one core's matmul peak at 512x576 @ 576x1536: fp32 {peaks['float32']:.1f} GFLOP/s, bf16 "
        f"{peaks['bfloat16']:.1f} GFLOP/s; bf16 units: {units}"
    )
    results = {}
    for name, settings in variants.items():
        if any("bf16" in s for s in settings) and not units and not args.bf16_anywhere:
            print(f"{name}: not run, this CPU has no bf16 units (--bf16-anywhere runs it slowly)")
            continue
        arguments = ["--child", name, "--settings", json.dumps(settings), "--pairs", args.pairs]
        arguments += ["--steps", str(args.steps), *(["--profile", str(args.profile)] if args.profile else [])]
        arguments += ["--bf16-anywhere"] * args.bf16_anywhere
        started = time.perf_counter()
        results[name] = peak_memory.run_child(__file__, arguments)
        results[name]["process_wall"] = time.perf_counter() - started
        results[name]["settings"] = settings
    base = results.get("fp32")
    print(
        f"\n{'variant':<14} {'precision':<9} {'process s':>9} {'setup s':>8} {'steps s':>8} {'x fp32':>7} "
        f"{'median step CPU s':>17} {'x fp32':>7} {'GFLOP/s/core':>12} {'x peak':>7} {'faults/step':>11} "
        f"{'peak MiB':>8}  settings"
    )
    for name, r in results.items():
        steps = r["steps"]
        steps_wall = sum(s["wall"] for s in steps)
        median_cpu = statistics.median(s["cpu"] for s in steps[1:]) if len(steps) > 1 else steps[0]["cpu"]
        achieved = sum(s["flops"] for s in steps[1:]) / sum(s["cpu"] for s in steps[1:]) / 1e9 if len(steps) > 1 else 0
        peak = peaks["bfloat16" if r["precision"] == "bf16" else "float32"]
        base_wall = sum(s["wall"] for s in base["steps"]) if base else None
        base_cpu = statistics.median(s["cpu"] for s in base["steps"][1:]) if base and len(base["steps"]) > 1 else None
        print(
            f"{name:<14} {r['precision']:<9} {r['process_wall']:>9.1f} {r['setup_wall']:>8.1f} {steps_wall:>8.1f} "
            f"{steps_wall / base_wall if base_wall else float('nan'):>7.2f} {median_cpu:>17.2f} "
            f"{median_cpu / base_cpu if base_cpu else float('nan'):>7.2f} {achieved:>12.1f} {achieved / peak:>7.2f} "
            f"{statistics.median(s['faults'] for s in steps):>11.0f} {r['peak_mib']:>8.0f}  {' '.join(r['settings'])}"
        )
    print("\nmalloc: " + "; ".join(f"{name}: {r['malloc']}" for name, r in results.items()))
    print("\nper step: wall s / CPU s / loss (relative difference from fp32's loss)")
    print(f"{'step':>4} " + " ".join(f"{name:>30}" for name in results))
    for index in range(max(len(r["steps"]) for r in results.values())):
        cells = []
        for r in results.values():
            s = r["steps"][index]
            off = f" ({s['loss'] / base['steps'][index]['loss'] - 1:+.1%})" if base and r is not base else ""
            cells.append(f"{s['wall']:>6.2f} {s['cpu']:>6.2f} {s['loss']:.4f}{off}")
        print(f"{index + 1:>4} " + " ".join(f"{cell:>30}" for cell in cells))


if __name__ == "__main__":
    main()
