"""The statistics of `wpo.training.loss.sequence_statistics` from hidden states, without ever holding `[B, T, V]` logits.

The WPO weight needs `log sum_v p_v^2` over the whole vocabulary at every response token, so a naive forward keeps
full-size logits (and several tensors like them) alive for backward: gigabytes per sequence at a 256k vocabulary.
Here the output projection runs on `chunk_size` response tokens at a time; each chunk's logits are reduced to three
numbers per token (target logit, `logsumexp(z)`, `log sum p^2`) and dropped, and backward recomputes them chunk by
chunk. Peak memory is O(chunk_size x V), whatever the batch and sequence length.

Under autocast (`train.mixed_precision: bf16`) the products are what autocast's own linear layer computes, and what
the full-logits path (`train.loss_chunk_size: 0`) gets from the model's output layer: inputs and logits in bf16. The
reductions over the vocabulary and every gradient accumulator stay fp32. On a CPU with bf16 units that makes the
output layer's four products per token (forward, its recomputation, two gradients) about ten times cheaper; in fp32
they were a fifth of the quickstart's bf16 step (benchmarks/quickstart_train.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from wpo.training.loss import IGNORE_INDEX, SequenceStatistics

# Rows of a low-precision output projection upcast at a time: bounds the fp32 copy of the weight (the whole of it
# is 3.7 GB for gemma-2-9b's 256000 x 3584 head).
VOCAB_SLICE = 32768
# Logits of one vocabulary slice under autocast (tokens x rows): 8 MB in fp32, below glibc's 32 MB threshold for
# mapping an allocation afresh (whose pages fault in again, zeroed, at every use), so the buffers are reused
SLICE_LOGITS = 1 << 21


def _weight_slices(weight: torch.Tensor, dtype: torch.dtype) -> Iterator[tuple[slice, torch.Tensor]]:
    """The weight in `dtype`, whole when it already is, else in slices of VOCAB_SLICE rows (upcast one at a time)."""
    vocab = weight.shape[0]
    if weight.dtype == dtype:
        yield slice(0, vocab), weight
        return
    for start in range(0, vocab, VOCAB_SLICE):
        rows = slice(start, min(start + VOCAB_SLICE, vocab))
        yield rows, weight[rows].to(dtype)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes a linear layer in here (bf16 under `train.mixed_precision: bf16`), or None."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """`hidden @ weight.T + bias` for one chunk of tokens, computed and returned in `dtype` (fp32 for bf16 inputs)."""
    logits = hidden.new_empty((hidden.shape[0], weight.shape[0]), dtype=dtype)
    for rows, weight_rows in _weight_slices(weight, dtype):
        torch.mm(hidden, weight_rows.t(), out=logits[:, rows])
    if bias is not None:
        logits += bias.to(dtype)
    return logits


class ChunkedTokenStatistics(torch.autograd.Function):
    """Per-token `log p(label)` and `log sum_v p_v^2` of `softcap(hidden @ weight.T + bias)`, chunk by chunk.

    Both outputs are differentiable (the trainer only backpropagates through the first, as the WPO weight is
    detached). Only `[N]`-sized statistics are saved for backward; the logits are recomputed there.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, softcap, chunk_size):
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        matmul_dtype = autocast_dtype(hidden.device.type)
        # cast once per pass, kept for backward (autocast's linear keeps its cast weight the same way)
        low_precision = None if matmul_dtype is None else weight.detach().to(matmul_dtype)
        if low_precision is None:
            statistics = _full_precision_forward(hidden, weight, bias, labels, softcap, chunk_size, dtype)
        else:
            statistics = _low_precision_forward(hidden, low_precision, bias, labels, softcap, chunk_size, dtype)
        token_logps, log_normalizers, log_sum_p_squared = statistics
        ctx.save_for_backward(hidden, weight, bias, labels, log_normalizers, log_sum_p_squared, low_precision)
        ctx.softcap, ctx.chunk_size = softcap, chunk_size
        ctx.set_materialize_grads(False)  # an output nobody backpropagates through costs nothing in backward
        return token_logps, log_sum_p_squared

    @staticmethod
    def backward(ctx, grad_token_logps, grad_log_sum_p_squared):
        hidden, weight, bias, labels, log_normalizers, log_sum_p_squared, low_precision = ctx.saved_tensors
        softcap, chunk_size = ctx.softcap, ctx.chunk_size
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        dtype = log_normalizers.dtype
        # fp32 accumulators whatever the inputs' precision: summing bf16 partial products would bias the update
        grad_hidden = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if needs_hidden else None
        # (under autocast every slice of the weight's gradient is written once, so nothing needs zeroing)
        new_buffer = torch.zeros if low_precision is None else torch.empty
        grad_weight = new_buffer(weight.shape, dtype=dtype, device=weight.device) if needs_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if needs_bias else None
        g1 = torch.zeros_like(log_normalizers) if grad_token_logps is None else grad_token_logps.to(dtype)
        g2 = None if grad_log_sum_p_squared is None else grad_log_sum_p_squared.to(dtype)
        per_token = (labels, log_normalizers, log_sum_p_squared, g1, g2)
        gradients = (grad_hidden, grad_weight, grad_bias)
        if low_precision is not None:
            _low_precision_backward(hidden, low_precision, bias, softcap, chunk_size, per_token, gradients)
        else:
            _full_precision_backward(hidden, weight, bias, softcap, chunk_size, per_token, gradients)
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
            None,
        )


def _full_precision_forward(hidden, weight, bias, labels, softcap, chunk_size: int, dtype: torch.dtype):
    """(log p(label), log normalizer, log Σp²) per token in fp32, a chunk of tokens against the whole vocabulary at a
    time."""
    count = hidden.shape[0]
    token_logps = hidden.new_empty(count, dtype=dtype)
    log_normalizers = hidden.new_empty(count, dtype=dtype)
    log_sum_p_squared = hidden.new_empty(count, dtype=dtype)
    for start in range(0, count, chunk_size):
        rows = slice(start, start + chunk_size)
        logits = _chunk_logits(hidden[rows].to(dtype), weight, bias, dtype)
        if softcap is not None:
            logits.div_(softcap).tanh_().mul_(softcap)
        target = logits.gather(1, labels[rows].unsqueeze(1)).squeeze(1)
        peak = logits.amax(1, keepdim=True)
        # One pass over the vocabulary gives both sums: e = exp(z - max) ≤ 1 has a largest entry of exactly 1,
        # so neither sum can underflow. logsumexp(2z) - 2 logsumexp(z) = log Σe² - 2 log Σe.
        exp_shifted = logits.sub_(peak).exp_()
        log_sum_exp = exp_shifted.sum(1).log_()
        log_sum_exp_squared = exp_shifted.square_().sum(1).log_()
        log_normalizers[rows] = peak.squeeze(1) + log_sum_exp
        token_logps[rows] = target - log_normalizers[rows]
        log_sum_p_squared[rows] = log_sum_exp_squared - 2.0 * log_sum_exp
        del logits, exp_shifted  # before the next chunk allocates its own
    return token_logps, log_normalizers, log_sum_p_squared


def _vocabulary_slices(tokens: int, vocab_size: int, chunk_size: int) -> Iterator[slice]:
    """Slices of the vocabulary whose logits for `tokens` tokens fit SLICE_LOGITS (and a chunk's whole-vocabulary
    logits, the memory the loss is bounded by)."""
    rows = max(1, min(chunk_size * vocab_size, SLICE_LOGITS) // max(1, tokens))
    for first in range(0, vocab_size, rows):
        yield slice(first, min(first + rows, vocab_size))


def _in_slice(labels: torch.Tensor, vocab: slice) -> torch.Tensor:
    """The labels' columns in the slice `vocab` of the vocabulary; -1 where a label lies outside it."""
    local = labels - vocab.start
    return torch.where((local >= 0) & (local < vocab.stop - vocab.start), local, -1)


def _low_precision_forward(hidden, low_precision, bias, labels, softcap, chunk_size: int, dtype: torch.dtype):
    """`_full_precision_forward` under autocast: the logits as autocast's linear computes them, a slice of the
    vocabulary against all the tokens at a time, the sums over the vocabulary in fp32, online (each slice's
    `Σ exp(z - max)` and `Σ exp(2(z - max))` rescaled to the running maximum)."""
    count, matmul_dtype = hidden.shape[0], low_precision.dtype
    hidden = hidden.to(matmul_dtype)
    bias = None if bias is None else bias.to(matmul_dtype)
    peak = torch.full((count,), -torch.inf, dtype=dtype, device=hidden.device)
    sum_exp, sum_exp_squared, target = (torch.zeros(count, dtype=dtype, device=hidden.device) for _ in range(3))
    for vocab in _vocabulary_slices(count, low_precision.shape[0], chunk_size):
        logits = torch.nn.functional.linear(hidden, low_precision[vocab], None if bias is None else bias[vocab])
        logits = logits.to(dtype)
        if softcap is not None:
            logits.div_(softcap).tanh_().mul_(softcap)
        local = _in_slice(labels, vocab)
        target = torch.where(local >= 0, logits.gather(1, local.clamp(min=0).unsqueeze(1)).squeeze(1), target)
        new_peak = torch.maximum(peak, logits.amax(1))
        rescale = torch.exp(peak - new_peak)  # 0 at the first slice
        exp_shifted = logits.sub_(new_peak.unsqueeze(1)).exp_()
        sum_exp = sum_exp * rescale + exp_shifted.sum(1)
        sum_exp_squared = sum_exp_squared * rescale.square() + exp_shifted.square_().sum(1)
        peak = new_peak
        del logits, exp_shifted
    log_sum_exp = sum_exp.log()
    log_normalizers = peak + log_sum_exp
    return target - log_normalizers, log_normalizers, sum_exp_squared.log() - 2.0 * log_sum_exp


def _full_precision_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    chunk_size: int,
    per_token: tuple,
    gradients: tuple,
) -> None:
    """The backward in fp32 (bf16 inputs upcast), a chunk of tokens against the whole vocabulary at a time."""
    grad_hidden, grad_weight, grad_bias = gradients
    dtype = per_token[1].dtype
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        hidden_rows = hidden[rows].to(dtype)
        logits = _chunk_logits(hidden_rows, weight, bias, dtype)
        grad_logits = _logit_gradient(logits, softcap, *(None if x is None else x[rows] for x in per_token))
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0)
        for vocab_rows, weight_rows in _weight_slices(weight, dtype):
            if grad_hidden is not None:
                grad_hidden[rows].addmm_(grad_logits[:, vocab_rows], weight_rows)
            if grad_weight is not None:
                grad_weight[vocab_rows].addmm_(grad_logits[:, vocab_rows].t(), hidden_rows)
        del logits, grad_logits  # before the next chunk allocates its own


def _low_precision_backward(
    hidden: torch.Tensor,
    low_precision: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    chunk_size: int,
    per_token: tuple,
    gradients: tuple,
) -> None:
    """The backward under autocast, every product in autocast's dtype and every sum in fp32, a slice of the
    vocabulary against all the tokens at a time: each slice of the weight's gradient is one product, written once,
    rounded once as autocast's linear rounds it. A slice's logits are at most SLICE_LOGITS, and no more than a chunk
    of tokens against the whole vocabulary, so memory stays O(chunk_size x V). (Token chunks against the whole
    vocabulary, as in fp32, added a bf16 `[V, H]` product into the fp32 gradient once per chunk: at 512 tokens x 4
    pairs those passes took a third of the bf16 step, benchmarks/train_step.py.)"""
    labels, log_normalizers, log_sum_p_squared, g1, g2 = per_token
    grad_hidden, grad_weight, grad_bias = gradients
    dtype, matmul_dtype = log_normalizers.dtype, low_precision.dtype
    hidden = hidden.to(matmul_dtype)
    bias = None if bias is None else bias.to(matmul_dtype)
    for vocab in _vocabulary_slices(hidden.shape[0], low_precision.shape[0], chunk_size):
        weight_slice = low_precision[vocab]
        logits = torch.nn.functional.linear(hidden, weight_slice, None if bias is None else bias[vocab]).to(dtype)
        local = _in_slice(labels, vocab)
        grad = _logit_gradient(logits, softcap, local, log_normalizers, log_sum_p_squared, g1, g2)
        if grad_bias is not None:
            grad_bias[vocab] = grad.sum(0)
        grad = grad.to(matmul_dtype)
        if grad_hidden is not None:
            grad_hidden += grad @ weight_slice
        if grad_weight is not None:
            grad_weight[vocab] = grad.t() @ hidden
        del logits, grad  # before the next slice allocates its own


def _logit_gradient(
    logits: torch.Tensor,
    softcap: float | None,
    labels: torch.Tensor,
    log_normalizers: torch.Tensor,
    log_sum_p_squared: torch.Tensor,
    g1: torch.Tensor,
    g2: torch.Tensor | None,
) -> torch.Tensor:
    """d/dx of `g1·log p(label) + g2·log Σp²` for one chunk of tokens, x the logits before the soft-cap (`logits`,
    recomputed, fp32, of the whole vocabulary or of a slice of it: `labels` are its columns, -1 where the label is
    outside the slice; consumed).

    With z the capped logits: d log p(label)/dz = onehot - p and d log Σp²/dz = 2q - 2p, q = p²/Σp² (the softmax
    of 2z), so dL/dz = `p·(2·g2·p/Σp² - g1 - 2·g2) + g1·onehot`; the cap z = c·tanh(x/c) adds dz/dx = 1 - tanh².
    Two `[chunk, V]` buffers when g2 is None (the trainer's case), three otherwise.
    """
    tanh = logits.div_(softcap).tanh_() if softcap is not None else None
    probs = tanh.mul(softcap) if tanh is not None else logits
    probs.sub_(log_normalizers.unsqueeze(1)).exp_()
    if g2 is None:
        grad = probs.mul_(-g1.unsqueeze(1))
    else:
        grad = probs.mul((2.0 * g2 * torch.exp(-log_sum_p_squared)).unsqueeze(1))
        grad.sub_((g1 + 2.0 * g2).unsqueeze(1)).mul_(probs)
    inside = labels >= 0
    grad.scatter_add_(1, labels.clamp(min=0).unsqueeze(1), torch.where(inside, g1, 0.0).unsqueeze(1))
    if tanh is not None:
        grad.mul_(tanh.square_().neg_().add_(1.0))
    return grad


def token_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    softcap: float | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`log p(label)` and `log Σ_v p_v²` per token, from `hidden [N, H]`, the output projection `weight [V, H]` (and
    `bias [V]`), and `labels [N]` (every one a real token id); computed in fp32 (or fp64) whatever the inputs' dtype.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.ndim != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not align")
    return ChunkedTokenStatistics.apply(hidden, weight, bias, labels, softcap, chunk_size)


def chunked_sequence_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    softcap: float | None,
    chunk_size: int,
) -> SequenceStatistics:
    """`sequence_statistics(softcap(hidden @ weight.T + bias), labels)` for `hidden [B, T, H]`, `labels [B, T]`.

    Only the response positions (labels other than IGNORE_INDEX) are projected; prompt and padding cost nothing.
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not align")
    mask = labels != IGNORE_INDEX
    token_logps, log_sum_p_squared = token_statistics(hidden[mask], weight, bias, labels[mask], softcap, chunk_size)
    # Back to [B, T] before summing, so the sums run in the same (pairwise) order as the full-logits path's
    per_position = token_logps.new_zeros(labels.shape).masked_scatter(mask, token_logps)
    aligned_per_position = token_logps.new_zeros(labels.shape).masked_scatter(mask, token_logps - log_sum_p_squared)
    token_counts = mask.sum(-1)
    return SequenceStatistics(
        per_position.sum(-1), aligned_per_position.sum(-1) / token_counts.clamp(min=1), token_counts
    )
