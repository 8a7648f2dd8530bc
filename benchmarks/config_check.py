"""Seconds `wpo config` takes to check a prompts file at the seed's scale: 60 000 UltraFeedback-sized prompts, each
with a `reference` answer that `sample.offpolicy_fields` names (about 1-2 KB a record), every line read as the sample
stage reads it. Side by side: the same command on 16 prompts (the command's start alone), and the 60 000 with the
last line malformed (the whole file read to find it, the error naming that line).

The texts are synthetic: words drawn from a 20 000-word vocabulary, prompts of 40-200 words, references of 100-200.

Run: python benchmarks/config_check.py [--prompts 60000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_prompts(path: Path, count: int, malformed_last: bool = False) -> Path:
    rng = random.Random(0)
    vocabulary = [f"w{index}" for index in range(20000)]

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(low, high)))

    with path.open("w") as handle:
        for index in range(count):
            record = {
                "id": f"p{index}",
                "messages": [{"role": "user", "content": text(40, 200)}],
                "reference": text(100, 200),
            }
            line = json.dumps(record)
            handle.write((line[:-20] if malformed_last and index == count - 1 else line) + "\n")
    return path


def timed_config(recipe: Path, prompts: Path) -> tuple[float, subprocess.CompletedProcess]:
    """`wpo config` in its own process, as a user runs it; its wall seconds and what it printed."""
    command = [sys.executable, "-m", "wpo", "config", str(recipe), f"sample.prompts={prompts}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "WPO_LOG_LEVEL": "WARNING"})
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=60000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        recipe = root / "recipe.yaml"
        recipe.write_text(
            f"output_dir: {root / 'run'}\nstages: [sample]\n"
            "sample: {n: 5, offpolicy_fields: [reference], max_new_tokens: 2048}\n"
        )
        small = write_prompts(root / "small.jsonl", 16)
        large = write_prompts(root / "large.jsonl", args.prompts)
        broken = write_prompts(root / "broken.jsonl", args.prompts, malformed_last=True)

        start_seconds, done = timed_config(recipe, small)
        assert done.returncode == 0, done.stderr
        seconds, done = timed_config(recipe, large)
        assert done.returncode == 0, done.stderr
        broken_seconds, failed = timed_config(recipe, broken)
        assert failed.returncode == 2 and f"broken.jsonl:{args.prompts}: invalid JSON" in failed.stderr, failed.stderr

        megabytes = large.stat().st_size / 1e6
        print(f"wpo config, {args.prompts} prompts with a reference each ({megabytes:.0f} MB): {seconds:.1f} s")
        print(f"wpo config, 16 prompts (the command's start): {start_seconds:.1f} s")
        print(f"reading the {args.prompts} prompts: {seconds - start_seconds:.1f} s")
        print(f"the last of {args.prompts} lines malformed, found and named: {broken_seconds:.1f} s")


if __name__ == "__main__":
    main()
