"""Reward-model scoring throughput: length-bucketed batches vs one candidate at a time, same model, same inputs.

The reward model is SmolLM2-135M's body with a fresh one-output head (LlamaForSequenceClassification) — the shape
and cost of a real small reward model; the scores themselves are meaningless here. Both runs score the same
candidates; the scores must agree.

Run: python benchmarks/score_throughput.py [--candidates 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

from wpo.config import load_recipe
from wpo.models import load_tokenizer, resolve_model_path
from wpo.scoring import ScoreRequest
from wpo.scoring.reward_model import RewardModelScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    from transformers import AutoModelForSequenceClassification

    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        base = resolve_model_path("embedded:smollm2-135m-instruct")
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(directory)
        load_tokenizer(base).save_pretrained(directory)
        rng = random.Random(0)
        words = "the a sea sky cat answer river blue quick model reward score pair long short".split()
        requests = [
            ScoreRequest(
                [{"role": "user", "content": f"Question {i}: " + " ".join(rng.choices(words, k=12))}],
                " ".join(rng.choices(words, k=rng.randint(10, 200))),
            )
            for i in range(args.candidates)
        ]
        timings, scores = {}, {}
        for batch_size in (1, args.batch_size):
            recipe = load_recipe(None, [f"score.model={directory}", f"score.batch_size={batch_size}"])
            scorer = RewardModelScorer(directory, recipe.model, batch_size, recipe.score.max_length)
            started = time.perf_counter()
            scores[batch_size] = scorer.score(requests)
            timings[batch_size] = time.perf_counter() - started
    agree = max(abs(a - b) for a, b in zip(scores[1], scores[args.batch_size], strict=True))
    print(f"reward model: SmolLM2-135M body + 1-output head, {args.candidates} candidates (10-200 words), fp32 CPU")
    print(f"{'batch size':>10} {'seconds':>8} {'candidates/s':>13} {'x one-at-a-time':>16}")
    for batch_size, seconds in timings.items():
        print(f"{batch_size:>10} {seconds:>8.2f} {args.candidates / seconds:>13.1f} {timings[1] / seconds:>16.2f}")
    print(f"max |score difference| batched vs one-at-a-time: {agree:.2e}")


if __name__ == "__main__":
    main()
