"""How far one tiny optimizer step moves a bf16-autocast forward, and which weights carry it.

AdamW's first step moves every weight by lr · sign(gradient). Under bf16 autocast the forward sees each fp32 master
weight rounded to bf16 (8 significant bits), so an update far below a bf16 ulp reaches the forward only through the
weights it pushes across a rounding boundary. A weight uniformly placed inside its ulp crosses with probability
|update| / ulp and then jumps one ulp: on average the forward moves as far as the update. A weight sitting exactly
on a tie (halfway between two bf16 values) crosses for any update in one of the two directions: if many weights sit
there, the forward moves much further along the gradient than the update. Weights that came from a format finer
than bf16 (fp16, or a GGUF dequantized to fp32, as the embedded SmolLM2) can sit there in numbers.

This script measures, on one synthetic pair of SmolLM2-135M (the answer's log-prob, `--tokens` answer tokens):
- the change of log p(answer) (the body and output layer under autocast, as the trainer computes them) after
  w += lr · sign(∇ log p) (the gradient's direction) and after w += lr · random
  signs, in fp32 and under bf16 autocast, with the weights as loaded and with the tie weights rounded
  (`train.bf16_ties: round`, what the trainer does under bf16: the forward at step 0 is the same, since the
  forward already rounds to those values);
- per group of weights (embedding / tied output layer, attention q k v o, MLP gate up down, norms), the share of
  weights on a bf16 tie and on the bf16 grid, the first-order change Σ|∂ log p/∂w|·lr that fp32 predicts, and what
  bf16 autocast gives when only that group moves.

Run: python benchmarks/bf16_update.py [--tokens 250] [--lr 1e-6]   (~6 min on a 2-core CPU without bf16 units)
"""

from __future__ import annotations

import argparse
import re
import time
from contextlib import nullcontext

import torch

MODEL = "embedded:smollm2-135m-instruct"
GROUPS = ("embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "norm")


def group_of(name: str) -> str:
    return next(group for group in GROUPS if re.search(group, name))


def answer_logp(model, ids: torch.Tensor, prompt_length: int, bf16: bool) -> torch.Tensor:
    """The body and the output layer under autocast (when `bf16`), the log-softmax in fp32, as the trainer's chunked
    loss computes them."""
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with context:
        hidden = model.model(ids).last_hidden_state[0, prompt_length - 1 : -1]
        logits = torch.nn.functional.linear(hidden, model.get_output_embeddings().weight).float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, prompt_length:, None]).sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=250, help="answer tokens (the prompt as many)")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--no-groups", action="store_true", help="only the first table (the per-group one is slow)")
    args = parser.parse_args()

    from train_step import synthetic_pairs

    from wpo.config import ModelConfig
    from wpo.models import load_causal_lm, load_tokenizer, resolve_model_path
    from wpo.training.precision import bf16_grid_counts, round_bf16_ties

    torch.manual_seed(0)
    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    row = synthetic_pairs(tokenizer, 1, 2 * args.tokens)[0]  # `tokens` prompt words, `tokens` answer tokens
    ids = torch.tensor([row["prompt_ids"] + row["chosen_ids"]])
    prompt_length = len(row["prompt_ids"])
    model = load_causal_lm(path, ModelConfig()).eval()
    params = dict(model.named_parameters())
    loaded = {name: p.detach().clone() for name, p in params.items()}

    answer_logp(model, ids, prompt_length, bf16=False).backward()
    gradient_sign = {name: p.grad.sign() for name, p in params.items()}
    random_sign = {
        name: torch.randint(0, 2, p.shape, generator=torch.Generator().manual_seed(1)).float() * 2 - 1
        for name, p in params.items()
    }
    first_order = {group: 0.0 for group in GROUPS}
    for name, p in params.items():
        first_order[group_of(name)] += p.grad.abs().sum().item() * args.lr
    model.zero_grad(set_to_none=True)

    def moved(direction: dict, bf16: bool, start: dict, only: str | None = None) -> float:
        """log p after the step minus log p at `start`."""
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(start[name])
            before = answer_logp(model, ids, prompt_length, bf16).item()
            for name, p in params.items():
                if only is None or group_of(name) == only:
                    p.add_(direction[name], alpha=args.lr)
            return answer_logp(model, ids, prompt_length, bf16).item() - before

    started = time.perf_counter()
    print(
        f"SmolLM2-135M, one pair ({prompt_length} prompt + {ids.shape[1] - prompt_length} answer tokens), "
        f"step lr={args.lr:g}; change of the answer's log-prob (nats)\n"
    )
    round_bf16_ties(model)  # what the trainer does under bf16, from the loaded weights
    ties_rounded = {name: p.detach().clone() for name, p in params.items()}
    print("| masters | precision | along the gradient | random signs |")
    print("|---|---|---:|---:|")
    for label, start in (("as loaded", loaded), ("ties rounded", ties_rounded)):
        for bf16 in (False, True):
            print(
                f"| {label} | {'bf16 autocast' if bf16 else 'fp32'} | {moved(gradient_sign, bf16, start):+.3f} | "
                f"{moved(random_sign, bf16, start):+.3f} |",
                flush=True,
            )

    if args.no_groups:
        return
    counts = {group: bf16_grid_counts([p for name, p in loaded.items() if group_of(name) == group]) for group in GROUPS}
    print("\nAlong the gradient, one group of weights moved at a time (masters as loaded):\n")
    print("| group | weights | on a bf16 tie | on the bf16 grid | fp32 first order | bf16 autocast | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for group in GROUPS:
        total, ties, on_grid = counts[group]
        change = moved(gradient_sign, True, loaded, only=group)
        print(
            f"| {group} | {total / 1e6:.1f}M | {ties / total:.1%} | {on_grid / total:.1%} | "
            f"{first_order[group]:+.3f} | {change:+.3f} | {change / first_order[group]:.1f}x |",
            flush=True,
        )
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
