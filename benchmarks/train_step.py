"""Step time and peak memory of one WPO optimizer step on SmolLM2-135M (embedded), side by side.

Each variant runs the trainer's own `_optimizer_step` in a fresh subprocess (so peak RSS readings do not bleed into
each other) on the same synthetic pairs of exactly `--tokens` tokens each (half prompt, half response). Variants:

- `all-logits`:  the baseline — logits for every position of the sequence (what a naive DPO forward does)
- `wpo`:         the trainer's default — logits only from the shortest prompt's last token on (`logits_to_keep`)
- `wpo+ckpt`:    the same with activation (gradient) checkpointing

Run: python benchmarks/train_step.py [--pairs 2] [--tokens 512] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("all-logits", "wpo", "wpo+ckpt")


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(variant: str, pairs: int, tokens: int, steps: int) -> dict:
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    from wpo.config import load_recipe
    from wpo.models import load_causal_lm, resolve_model_path
    from wpo.train import trainer
    from wpo.train.reference import ReferenceLogps, compute_reference_logps
    from wpo.train.tokenize import PairBatch, TokenizedPair, TokenizedPairs

    torch.manual_seed(0)
    recipe = load_recipe(None, [
        f"train.per_device_batch_size={pairs}", "train.warmup_ratio=0", "train.learning_rate=1e-6",
        f"train.gradient_checkpointing={'true' if variant == 'wpo+ckpt' else 'false'}",
        f"train.max_length={tokens + 1}", f"train.max_prompt_length={tokens // 2}",
    ])  # fmt: skip
    path = resolve_model_path(recipe.model.name_or_path)
    model = trainer._make_trainable(load_causal_lm(path, recipe.model), recipe, None)
    vocab = model.config.vocab_size
    half = tokens // 2
    tokenized = TokenizedPairs(
        [
            TokenizedPair(str(i), torch.randint(0, vocab, (half,)).tolist(), torch.randint(0, vocab, (half,)).tolist(),
                          torch.randint(0, vocab, (half,)).tolist())
            for i in range(pairs)
        ], 0, 0,
    )  # fmt: skip
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    chosen, rejected = compute_reference_logps(model, tokenized, pairs, 0, accelerator.device)
    references = ReferenceLogps(chosen, rejected, None, False)  # policy = reference: step-1 loss is ln 2 x weight
    if variant == "all-logits":  # keep every position's logits: the batch's labels grow to the full length
        original = trainer.collate_pairs

        def all_positions(batch_pairs, pad_id):
            batch = original(batch_pairs, pad_id)
            length = batch.input_ids.shape[1]
            pad = torch.full((batch.labels.shape[0], length - batch.logits_to_keep), -100, dtype=torch.long)
            return PairBatch(batch.input_ids, batch.attention_mask, torch.cat([pad, batch.labels], 1), length,
                             batch.pair_count)  # fmt: skip

        trainer.collate_pairs = all_positions
    optimizer = trainer._build_optimizer(model, recipe)
    schedule = trainer.build_schedule(pairs, recipe, 1)
    scheduler = get_scheduler("constant", optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    before = rss_mib()
    times, losses = [], []
    for step in range(steps + 1):
        started = time.perf_counter()
        row = trainer._optimizer_step(model, optimizer, scheduler, accelerator, recipe, schedule, 0, tokenized,
                                      references, 0)  # fmt: skip
        if step:  # the first step allocates optimizer state: timed separately below
            times.append(time.perf_counter() - started)
        losses.append(row["loss"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "step_seconds": statistics.median(times),
        "peak_rss_mib": peak,
        "step_peak_over_start_mib": peak - before,
        "first_loss": losses[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.pairs, args.tokens, args.steps)))
        return
    results = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--child", variant, "--pairs", str(args.pairs), "--tokens",
                   str(args.tokens), "--steps", str(args.steps)]  # fmt: skip
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    base = results[0]
    print(f"SmolLM2-135M, {args.pairs} pairs x {args.tokens} tokens, fp32, median of {args.steps} steps")
    print(f"{'variant':<12} {'step s':>8} {'x base':>7} {'peak RSS MiB':>13} {'step peak MiB':>14} {'x base':>7}")
    for r in results:
        print(
            f"{r['variant']:<12} {r['step_seconds']:>8.2f} {r['step_seconds'] / base['step_seconds']:>7.2f} "
            f"{r['peak_rss_mib']:>13.0f} {r['step_peak_over_start_mib']:>14.0f} "
            f"{r['step_peak_over_start_mib'] / base['step_peak_over_start_mib']:>7.2f}"
        )
    losses = [r["first_loss"] for r in results]
    agree = all(math.isclose(loss, losses[0], rel_tol=1e-4) for loss in losses)
    print(f"first-step losses agree across variants: {agree} ({', '.join(f'{loss:.6e}' for loss in losses)})")


if __name__ == "__main__":
    main()
