"""Per-process peak memory and step time of `wpo train` on two processes: plain data parallel vs DeepSpeed ZeRO-3.

Both launches train the embedded SmolLM2-135M-Instruct (full fine-tuning, fp32, chunked loss) on the same synthetic
pairs with the same recipe, one pair per process per step: `torchrun --nproc_per_node 2 -m wpo train` (DDP over gloo)
and `accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 2 --mixed_precision no` (ZeRO-3 on
DeepSpeed's CPU accelerator). DDP keeps the whole weights, gradients and Adam state in every process (16 bytes per
parameter); ZeRO-3 keeps half of each in each of two. The peak resident set of every training process is read from
/proc (VmHWM, polled until it exits); it includes what both launches hold alike — the interpreter and libraries, and
the whole fp32 model each process loads for its share of the reference pass before `prepare` partitions it — and
DeepSpeed's communication buckets (5e8 elements each by default, more than this model's whole state). Step time is
the mean of `step_seconds` after the first step (gloo on CPU: it says what ZeRO-3's gathers cost here, not on GPUs).

Run: python benchmarks/distributed_memory.py [--tokens 512] [--steps 6]   (about 8 minutes on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from peak_memory import ratio
from train_step import MODEL, synthetic_pairs

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ("ddp", "zero3")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher_command(launcher: str) -> list[str]:
    port = str(free_port())
    if launcher == "ddp":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            "-m",
            "wpo",
            "train",
        ]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate" / "zero3.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        port,
        "--mixed_precision",
        "no",
        "-m",
        "wpo",
        "train",
    ]


def training_processes(launcher: psutil.Process) -> list[psutil.Process]:
    """The launched `wpo train` workers (not the launcher itself)."""
    found = []
    for child in launcher.children(recursive=True):
        try:
            if "wpo" in child.cmdline() and "train" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def peak_mib(process: psutil.Process) -> float | None:
    try:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def measure(launcher: str, recipe: Path, output_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [*launcher_command(launcher), str(recipe), f"output_dir={output_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    watched = psutil.Process(process.pid)
    peaks: dict[int, float] = {}
    while process.poll() is None:
        for worker in training_processes(watched):
            value = peak_mib(worker)
            if value is not None:
                peaks[worker.pid] = max(peaks.get(worker.pid, 0.0), value)
        time.sleep(0.1)
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{launcher} failed:\n{stderr[-3000:]}")
    rows = [json.loads(line) for line in (output_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    return {
        "launcher": launcher,
        "processes": len(peaks),
        "peak_mib_max": max(peaks.values()),
        "peak_mib_mean": statistics.mean(peaks.values()),
        "step_seconds": statistics.mean(row["step_seconds"] for row in rows[1:]),
        "wall_seconds": time.perf_counter() - started,
        "final_loss": rows[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence (half prompt, half response)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--launchers", nargs="+", choices=LAUNCHERS, default=list(LAUNCHERS))
    args = parser.parse_args()

    from wpo.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(MODEL), False)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        pairs = work / "pairs.jsonl"
        with pairs.open("w", encoding="utf-8") as handle:
            for index, pair in enumerate(synthetic_pairs(tokenizer, 2 * args.steps, args.tokens)):
                record = {
                    "id": f"pair-{index}",
                    "prompt": [{"role": "user", "content": pair["prompt"]}],
                    "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                    "rejected": [{"role": "assistant", "content": pair["rejected"]}],
                    "score_chosen": 1.0,
                    "score_rejected": 0.0,
                    "source_chosen": "policy",
                    "source_rejected": "policy",
                }
                handle.write(json.dumps(record) + "\n")
        recipe = work / "train.yaml"
        recipe.write_text(
            f"seed: 0\nmodel: {{name_or_path: '{MODEL}'}}\n"
            f"train: {{pairs: {pairs}, max_steps: {args.steps}, per_device_batch_size: 1, learning_rate: 1.0e-6, "
            f"max_length: {2 * args.tokens}, max_prompt_length: {args.tokens}, logging_steps: 1, save_steps: 0}}\n"
        )
        results = {launcher: measure(launcher, recipe, work / launcher) for launcher in args.launchers}

    base = results.get("ddp")
    print(
        f"\nwpo train, SmolLM2-135M full fine-tuning, 2 processes x 1 pair, {args.tokens} tokens per sequence, "
        f"{args.steps} steps"
    )
    print(f"{'launcher':<8} {'peak MiB (max)':>15} {'peak MiB (mean)':>16} {'vs DDP':>7} {'step s':>8} {'vs DDP':>7}")
    for name, result in results.items():
        print(
            f"{name:<8} {result['peak_mib_max']:>15.0f} {result['peak_mib_mean']:>16.0f} "
            f"{ratio(result, base, 'peak_mib_max'):>7} {result['step_seconds']:>8.2f} "
            f"{ratio(result, base, 'step_seconds'):>7}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
