"""Peak memory and time of the WPO loss alone at Gemma's 256k vocabulary: chunked vs full logits vs TRL, side by side.

One pair (a chosen and a rejected sequence of `T` tokens each, half prompt, half response) on a Gemma-2-shaped
output layer: vocabulary 256000, final-logit soft-cap 30, a small hidden size (the model body is left out: the loss
starts from the final hidden states). Each variant runs hidden states → statistics → weighted loss → backward (to
the hidden states and the output weight) in a fresh subprocess; memory is the peak resident set over what was
resident before the loss (inputs and weight included in the baseline, their gradients not). Variants:

- `chunked`:      `wpo.training.chunked_loss` (train.loss_chunk_size > 0, the default): response tokens only, `--chunk` at a time
- `full-logits`:  train.loss_chunk_size = 0: logits `[B, T/2 + 1, V]` from the shortest prompt on, softcap, then
                  `wpo.training.loss.sequence_statistics`
- `trl`:          TRL 1.16's `DPOTrainer(use_weighting=True)` loss as it runs on this machine: its fused LM head
                  (`trl.kernels.chunked_logprob.ChunkedLogProbFunction`, with the outputs DPOTrainer requests) over
                  every position, as its forward does on a device without Triton, then its weight `exp(mean(log p -
                  log Σp²))` for chosen times rejected
- `trl-compact`:  the same on response positions only, as TRL's forward does on CUDA (for the algorithm alone)

Losses are computed without the weight's clamp at 1 (TRL has none), so all variants must print the same loss.

Run: python benchmarks/loss_memory.py [--tokens 512 1024 2048] [--variants chunked full-logits trl trl-compact]
     [--hidden 256] [--chunk 256] [--repeats 1] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import peak_memory
from peak_memory import ratio

VOCAB = 256_000
SOFTCAP = 30.0
BETA = 0.1
VARIANTS = ("chunked", "full-logits", "trl", "trl-compact")
# What DPOTrainer(use_weighting=True) asks its fused LM head for (trl/trainer/dpo_trainer.py, 1.16)
TRL_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


def make_inputs(tokens: int, hidden_size: int, dtype):
    """Final hidden states `[2, T, H]` (chosen, rejected), an output weight and the batch of token ids.

    Logits have std ≈ 10, and each hidden state leans towards its next token's row of the weight (+≈40 on its logit,
    which the cap bends to < 30), so log-probs and WPO weights look like a trained model's, not a random one's.
    """
    import torch

    from wpo.training.tokenize import TokenizedPair, collate_pairs

    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, VOCAB, (tokens // 2,), generator=generator).tolist()
    chosen, rejected = (torch.randint(0, VOCAB, (tokens - tokens // 2,), generator=generator).tolist() for _ in "cr")
    batch = collate_pairs([TokenizedPair("0", prompt, chosen, rejected)], pad_token_id=0)
    weight = torch.randn(VOCAB, hidden_size, generator=generator) * 10.0 / hidden_size**0.5
    next_rows = torch.nn.functional.normalize(weight[batch.input_ids.roll(-1, 1)], dim=-1)
    hidden = torch.randn(2, tokens, hidden_size, generator=generator) + 4.0 * next_rows
    return hidden.to(dtype).requires_grad_(True), weight.to(dtype).requires_grad_(True), batch


def wpo_loss(hidden, weight, batch, variant: str, chunk: int):
    import torch

    from wpo.training.chunked_loss import chunked_sequence_statistics
    from wpo.training.forward import split_statistics
    from wpo.training.loss import preference_loss, sequence_statistics, soft_cap

    kept = hidden[:, -batch.logits_to_keep :]
    if variant == "chunked":
        stats = chunked_sequence_statistics(kept, weight, None, batch.labels, SOFTCAP, chunk)
    else:  # what the model's forward and `sequence_statistics` do with train.loss_chunk_size = 0
        stats = sequence_statistics(soft_cap(torch.nn.functional.linear(kept, weight), SOFTCAP), batch.labels)
    chosen, rejected = split_statistics(stats, batch.pair_count)
    zero = torch.zeros(1)
    return preference_loss(chosen, rejected, zero, zero, beta=BETA, clamp=False).loss


def trl_loss(hidden, weight, batch, compact: bool):
    """TRL 1.16's DPO loss with `use_weighting=True`, from its fused LM head's per-token outputs (read, not copied)."""
    import torch
    import torch.nn.functional as F
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)[:, 1:].clone()
    prompt_length = batch.input_ids.shape[1] - batch.logits_to_keep + 1
    labels[:, : prompt_length - 1] = -100  # TRL's completion mask: only response tokens are labelled
    mask = labels != -100
    shifted = hidden[:, :-1]
    if compact:
        inputs, targets = shifted[mask], labels[mask]
    else:
        inputs, targets = shifted.reshape(-1, shifted.shape[-1]), labels.clamp(min=0).reshape(-1)
    outputs = ChunkedLogProbFunction.apply(
        inputs, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, SOFTCAP, 1.0, TRL_OUTPUTS
    )
    if compact:
        log_probs, _, log_sum_sq, *_ = (x.new_zeros(mask.shape).masked_scatter(mask, x) for x in outputs)
    else:
        log_probs, _, log_sum_sq, *_ = (x.view(mask.shape).masked_fill(~mask, 0) for x in outputs)
    logps = log_probs.sum(1)
    with torch.no_grad():
        mean_aligned = ((log_probs - log_sum_sq) * mask).sum(1) / mask.sum(1).clamp(min=1)
    weights = torch.exp(mean_aligned)
    per_pair = -F.logsigmoid(BETA * (logps[0] - logps[1])) * weights[0] * weights[1]
    return per_pair.mean()


def child(variant: str, tokens: int, hidden_size: int, chunk: int, repeats: int, dtype_name: str) -> dict:
    import torch

    torch.manual_seed(0)
    hidden, weight, batch = make_inputs(tokens, hidden_size, getattr(torch, dtype_name))

    def step() -> float:
        hidden.grad = weight.grad = None
        if variant.startswith("trl"):
            loss = trl_loss(hidden, weight, batch, compact=variant == "trl-compact")
        else:
            loss = wpo_loss(hidden, weight, batch, variant, chunk)
        loss.backward()
        return loss.item()

    baseline = peak_memory.reset_peak()
    loss = step()
    peak = peak_memory.peak_mib() - baseline
    wall, cpu = [], []
    for _ in range(repeats):  # CPU time: on a shared machine, wall time depends on what else runs meanwhile
        started, started_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return {
        "variant": variant,
        "tokens": tokens,
        "peak_mib": peak,
        "seconds": statistics.median(wall),
        "cpu_seconds": statistics.median(cpu),
        "loss": loss,
        "grad_norm": float(hidden.grad.norm()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=256, help="tokens per chunk of the chunked variant")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats after the first (memory) run")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="hidden states and weight")
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens[0], args.hidden, args.chunk, args.repeats, args.dtype)))
        return

    import torch
    import trl

    print(
        f"WPO loss alone: 1 pair, T tokens per sequence (half prompt), vocab {VOCAB}, hidden {args.hidden}, "
        f"softcap {SOFTCAP}, {args.dtype}, chunk {args.chunk}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), trl {trl.__version__}; times: median of {args.repeats} "
        "repeat(s) after the first run, ratios of CPU time"
    )
    print(
        f"{'T':>5} {'variant':<12} {'peak MiB':>9} {'x full':>7} {'x trl':>6} {'wall s':>7} {'CPU s':>7} "
        f"{'x full':>7} {'x trl':>6}  loss"
    )
    for tokens in args.tokens:
        results = {}
        for variant in args.variants:
            arguments = [
                "--child",
                variant,
                "--tokens",
                str(tokens),
                "--hidden",
                str(args.hidden),
                "--chunk",
                str(args.chunk),
                "--repeats",
                str(args.repeats),
                "--dtype",
                args.dtype,
            ]
            results[variant] = peak_memory.run_child(__file__, arguments)
        full, trl_result = results.get("full-logits"), results.get("trl")
        for variant, r in results.items():
            print(
                f"{tokens:>5} {variant:<12} {r['peak_mib']:>9.0f} {ratio(r, full, 'peak_mib'):>7} "
                f"{ratio(r, trl_result, 'peak_mib'):>6} {r['seconds']:>7.2f} {r['cpu_seconds']:>7.2f} "
                f"{ratio(r, full, 'cpu_seconds'):>7} {ratio(r, trl_result, 'cpu_seconds'):>6}  {r['loss']:.6e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
