"""Speed and memory of eval's contamination check at AlpacaEval's scale: 805 eval instructions against 60 000 training
prompts (and their pairs' two answers each), side by side with a baseline that only reads the same files.

The texts are synthetic (words drawn from a 20 000-word vocabulary, prompts of 40-200 words, answers of 100-300), 20
eval instructions planted verbatim inside training prompts; the check must find exactly those.

Run: python benchmarks/contamination_check.py [--prompts 60000] [--instructions 805]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import peak_memory


def write_sets(directory: Path, prompts: int, instructions: int) -> tuple[Path, Path, list[str], set[int]]:
    rng = random.Random(0)
    vocabulary = [f"w{index}" for index in range(20000)]

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(low, high)))

    eval_set = [text(13, 60) for _ in range(instructions)]  # 13 words or more: checked by n-gram
    planted = set(rng.sample(range(instructions), 20))
    planted_at = dict(zip(rng.sample(range(prompts), len(planted)), sorted(planted)))
    prompts_path, pairs_path = directory / "prompts.jsonl", directory / "pairs.jsonl"
    with prompts_path.open("w") as prompt_file, pairs_path.open("w") as pair_file:
        for index in range(prompts):
            prompt = text(40, 200)
            if index in planted_at:
                prompt = f"{prompt} {eval_set[planted_at[index]]} {text(5, 20)}"
            messages = [{"role": "user", "content": prompt}]
            prompt_file.write(json.dumps({"id": f"p{index}", "messages": messages}) + "\n")
            pair_file.write(
                json.dumps(
                    {
                        "id": f"p{index}",
                        "prompt": messages,
                        "chosen": [{"role": "assistant", "content": text(100, 300)}],
                        "rejected": [{"role": "assistant", "content": text(100, 300)}],
                    }
                )
                + "\n"
            )
    return prompts_path, pairs_path, eval_set, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=60000)
    parser.add_argument("--instructions", type=int, default=805)
    args = parser.parse_args()

    from wpo.data.io import read_records
    from wpo.evaluation.contamination import find_overlaps, texts_of

    with tempfile.TemporaryDirectory() as directory:
        prompts_path, pairs_path, eval_set, planted = write_sets(Path(directory), args.prompts, args.instructions)
        sources = [str(prompts_path), str(pairs_path)]

        def texts():
            for source in sources:
                for record in read_records(source):
                    yield from texts_of(record.data)

        start = peak_memory.reset_peak()
        started = time.perf_counter()
        read = sum(1 for _ in texts())
        baseline_seconds = time.perf_counter() - started
        baseline_mib = peak_memory.peak_mib() - start

        start = peak_memory.reset_peak()
        started = time.perf_counter()
        overlap = find_overlaps(eval_set, texts(), sources)
        seconds = time.perf_counter() - started
        mib = peak_memory.peak_mib() - start
    assert set(overlap.found) == planted, (sorted(overlap.found), sorted(planted))
    print(
        f"{args.instructions} eval instructions vs {args.prompts} training prompts and their pairs "
        f"({read} texts): found the {len(planted)} planted, nothing else"
    )
    print("| | seconds | x read only | peak MiB over start |")
    print("|---|---:|---:|---:|")
    print(f"| read the files only | {baseline_seconds:.1f} | 1.00 | {baseline_mib:.0f} |")
    print(f"| contamination check | {seconds:.1f} | {seconds / baseline_seconds:.2f} | {mib:.0f} |")


if __name__ == "__main__":
    main()
