"""Reference passes and wall time of `wpo sweep` over three betas, before and after the shared reference cache (#40).

Before, each run of a sweep cached its reference log-probs in its own train directory, so a sweep over `train.beta`
computed the same pass once per variant; now the runs share `sweep/reference_cache/`, keyed by what determines the
log-probs. "before" is the source tree of `--before` (default: the commit before the change), extracted with
`git archive` and put first on PYTHONPATH; "after" is this checkout. Both run the same `wpo sweep` command, one after
the other, on the same pairs and a small random llama-style model (built here, no download), trained on every pair
for one epoch: the reference pass (a forward over every pair) is then about a quarter of a run's training compute, as
in a real one-epoch run. Printed side by side: reference passes computed and read, the sweep's wall time, the train
stages' own seconds (mean over the repeats, which alternate which side runs first, and each repeat's), and whether
every run's logged losses are the same bits before and after.

Run: python benchmarks/sweep_reference_passes.py [--pairs 48] [--repeats 2]   (~1.5 min on a busy 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

BEFORE = "f3d0826"  # main just before the shared reference cache (5e6c39e)
BETAS = "0.05,0.1,0.2"


def build_model(directory: Path, hidden: int, layers: int) -> None:
    """A random llama-style model with the tests' byte-level BPE tokenizer and chat template."""
    import torch
    from helpers import CHATML_TEMPLATE, build_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = build_tokenizer(CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def write_pairs(path: Path, count: int, words: int) -> None:
    """Pairs of sentences drawn from the tokenizer's corpus words (about one token each)."""
    from helpers import CORPUS, pair_record, write_lines

    vocabulary = sorted({word.strip(".,?") for line in CORPUS for word in line.split()})
    rng = random.Random(0)

    def sentence(length: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(length)) + "."

    write_lines(
        path, [pair_record(f"p{i}", sentence(words), sentence(words), sentence(words // 2)) for i in range(count)]
    )


def write_recipe(path: Path, model: Path, pairs: Path, output_dir: Path) -> None:
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "output_dir": str(output_dir),
                "seed": 1,
                "stages": ["train"],
                "model": {"name_or_path": str(model)},
                "train": {
                    "pairs": str(pairs),
                    "num_epochs": 1,
                    "per_device_batch_size": 4,
                    "max_length": 512,
                    "max_prompt_length": 256,
                    "logging_steps": 1,
                    "save_steps": 0,
                    "report_to": [],
                },
            }
        )
    )


def sweep(recipe: Path, python_path: Path, threads: int) -> tuple[float, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(python_path),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "WPO_LOG_LEVEL": "INFO",
        "HF_HUB_OFFLINE": "1",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "wpo", "sweep", str(recipe), "--grid", f"train.beta={BETAS}", "--seeds", "1"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"wpo sweep ({python_path}) failed:\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def run_figures(output_dir: Path) -> tuple[float, list[list[float]]]:
    """The train stages' own seconds (their manifests), and every run's logged losses, in run order."""
    runs = sorted((output_dir / "sweep" / "runs").iterdir())
    train_seconds = sum(json.loads((run / "train" / "manifest.json").read_text())["wall_seconds"] for run in runs)
    losses = [
        [json.loads(line)["loss"] for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
        for run in runs
    ]
    return train_seconds, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--words", type=int, default=60, help="words per prompt and chosen answer (rejected: half)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each sweep")
    parser.add_argument("--before", default=BEFORE, help="the git revision whose wpo is 'before'")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps of each side, alternating which runs first")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wpo-sweep-ref-") as work:
        work_dir = Path(work)
        model, pairs = work_dir / "model", work_dir / "pairs.jsonl"
        build_model(model, args.hidden, args.layers)
        write_pairs(pairs, args.pairs, args.words)
        before_tree = work_dir / "before"
        before_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.before, "src/wpo"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive, check=True)

        figures: dict[str, list[dict]] = {"before": [], "after": []}
        sources = {"before": before_tree / "src", "after": ROOT / "src"}
        for repeat in range(args.repeats):  # alternating which goes first: the host's load drifts
            for name in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
                output_dir = work_dir / f"{name}-{repeat}"
                recipe = work_dir / f"{name}-{repeat}.yaml"
                write_recipe(recipe, model, pairs, output_dir)
                seconds, log = sweep(recipe, sources[name], args.threads)
                train_seconds, losses = run_figures(output_dir)
                figures[name].append(
                    {
                        "computed": log.count("reference log-probs: computed"),
                        "read": log.count("reference log-probs: read"),
                        "wall": seconds,
                        "train": train_seconds,
                        "losses": losses,
                    }
                )

    before, after = figures["before"], figures["after"]
    print(
        f"wpo sweep --grid train.beta={BETAS} --seeds 1: {args.pairs} pairs, one epoch, batch 4, a random llama "
        f"(hidden {args.hidden}, {args.layers} layers), {args.threads} thread(s), {args.repeats} repeat(s) each; "
        f"before = {args.before}"
    )
    print(f"{'':28}{'before':>10}{'after':>10}{'after/before':>14}   each repeat (before / after)")
    for key, label in (("computed", "reference passes computed"), ("read", "reference passes read")):
        print(f"{label:28}{before[0][key]:>10}{after[0][key]:>10}")
    for key, label in (("wall", "sweep wall seconds"), ("train", "train stages' seconds")):
        mean_before, mean_after = (statistics.mean(run[key] for run in side) for side in (before, after))
        each = ", ".join(f"{b[key]:.1f} / {a[key]:.1f}" for b, a in zip(before, after, strict=True))
        print(f"{label:28}{mean_before:>10.1f}{mean_after:>10.1f}{mean_after / mean_before:>13.2f}x   {each}")
    same = all(run["losses"] == before[0]["losses"] for run in before + after)
    print(f"every run's logged losses the same bits before and after: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
