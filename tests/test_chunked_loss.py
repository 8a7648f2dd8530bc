"""The chunked loss against the full-logits path: same values and gradients, and no `[N, V]` tensor saved for backward.

The full-logits path (`sequence_statistics` on `softcap(hidden @ W.T + b)`) is the reference; it is itself checked
against hand-worked numbers in test_loss.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from wpo.training import chunked_loss
from wpo.training.chunked_loss import chunked_sequence_statistics, token_statistics
from wpo.training.loss import IGNORE_INDEX, SequenceStatistics, preference_loss, sequence_statistics, soft_cap

VOCAB, HIDDEN = 50, 8


def random_batch(seed: int, rows: int = 4, length: int = 6, dtype: torch.dtype = torch.float32, bias: bool = True):
    """Hidden states, an output layer with logits of std ≈ 6 (so a cap of 4 bends them hard) and labels.

    Row 0 has two prompt positions, row 1 trailing padding, row 3 no response token at all.
    """
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, length, HIDDEN, generator=generator).to(dtype).requires_grad_(True)
    weight = (torch.randn(VOCAB, HIDDEN, generator=generator) * 2.0).to(dtype).requires_grad_(True)
    head_bias = torch.randn(VOCAB, generator=generator).to(dtype).requires_grad_(True) if bias else None
    labels = torch.randint(0, VOCAB, (rows, length), generator=generator)
    labels[0, :2] = IGNORE_INDEX
    labels[1, -3:] = IGNORE_INDEX
    labels[3] = IGNORE_INDEX
    return hidden, weight, head_bias, labels


def full_statistics(hidden, weight, bias, labels, softcap) -> SequenceStatistics:
    """The reference: full logits in fp32, as `train.loss_chunk_size: 0` computes them."""
    logits = torch.nn.functional.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    return sequence_statistics(soft_cap(logits, softcap), labels)


def objective(stats: SequenceStatistics) -> torch.Tensor:
    """A loss through both outputs (`aligned_logps` is not detached here), so both incoming gradients are exercised."""
    coefficients = torch.tensor([0.7, -1.3, 0.4, 2.0])
    return (coefficients * stats.logps).sum() + (coefficients.flip(0) * stats.aligned_logps).sum() * 5.0


def gradients(stats: SequenceStatistics, *inputs) -> list[torch.Tensor]:
    return list(torch.autograd.grad(objective(stats), [x for x in inputs if x is not None]))


def assert_gradients_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float) -> None:
    for a, e in zip(actual, expected, strict=True):
        assert_close(a.float(), e.float(), rtol=rtol, atol=rtol * e.abs().max().item())


@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("chunk_size", [4, 5, 64])  # divides the 16 response tokens, does not, exceeds them
def test_fp32_values_and_gradients_equal_the_full_logits_path(softcap, chunk_size):
    hidden, weight, bias, labels = random_batch(seed=chunk_size)
    chunked = chunked_sequence_statistics(hidden, weight, bias, labels, softcap, chunk_size)
    full = full_statistics(hidden, weight, bias, labels, softcap)
    assert chunked.token_counts.tolist() == full.token_counts.tolist() == [4, 3, 6, 0]
    assert_close(chunked.logps, full.logps, rtol=1e-5, atol=1e-6)
    assert_close(chunked.aligned_logps, full.aligned_logps, rtol=1e-5, atol=1e-6)
    assert chunked.logps[3] == 0.0 and chunked.aligned_logps[3] == 0.0
    assert_gradients_close(gradients(chunked, hidden, weight, bias), gradients(full, hidden, weight, bias), rtol=1e-4)


@pytest.mark.parametrize("softcap", [None, 4.0])
def test_bf16_inputs_are_computed_in_fp32(softcap, monkeypatch):
    """bf16 hidden states and weight: values equal the fp32 computation on the same (upcast) numbers; gradients are
    that computation's, rounded once to bf16. The weight is upcast 7 vocabulary rows at a time here (not all at
    once), which must not change anything."""
    monkeypatch.setattr(chunked_loss, "VOCAB_SLICE", 7)
    hidden, weight, bias, labels = random_batch(seed=11, dtype=torch.bfloat16)
    chunked = chunked_sequence_statistics(hidden, weight, bias, labels, softcap, chunk_size=5)
    assert chunked.logps.dtype == torch.float32
    upcast = [x.detach().float().requires_grad_(True) for x in (hidden, weight, bias)]
    full = full_statistics(*upcast, labels, softcap)
    assert_close(chunked.logps, full.logps, rtol=1e-5, atol=1e-6)
    assert_close(chunked.aligned_logps, full.aligned_logps, rtol=1e-5, atol=1e-6)
    actual = gradients(chunked, hidden, weight, bias)
    assert all(grad.dtype == torch.bfloat16 for grad in actual)
    expected = [grad.to(torch.bfloat16) for grad in gradients(full, *upcast)]
    assert_gradients_close(actual, expected, rtol=2**-8)  # one bf16 rounding apart at most


def test_trainer_loss_gradient_equals_the_full_logits_path():
    """Through `preference_loss`, whose WPO weight is detached: only `log p` receives a gradient (the cheaper
    backward, without the `log Σp²` term)."""
    hidden, weight, bias, labels = random_batch(seed=5, bias=False)
    references = torch.tensor([-40.0, -35.0])

    def loss(stats: SequenceStatistics) -> torch.Tensor:
        halves = [
            SequenceStatistics(s.logps[rows], s.aligned_logps[rows], s.token_counts[rows])
            for s in [stats]
            for rows in (slice(0, 2), slice(2, 4))
        ]
        return preference_loss(halves[0], halves[1], references, references, beta=0.5, clamp=False).loss

    chunked = loss(chunked_sequence_statistics(hidden, weight, None, labels, 4.0, chunk_size=3))
    full = loss(full_statistics(hidden, weight, None, labels, 4.0))
    assert_close(chunked, full, rtol=1e-5, atol=0.0)
    actual = torch.autograd.grad(chunked, [hidden, weight])
    expected = torch.autograd.grad(full, [hidden, weight])
    assert_gradients_close(list(actual), list(expected), rtol=1e-4)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_gradients_of_each_output_pass_gradcheck(softcap):
    """Finite differences in float64 for `log p`, `log Σp²` and both, with respect to hidden, weight and bias."""
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = (torch.randn(11, 5, dtype=torch.float64, generator=generator) * 2).requires_grad_(True)
    bias = torch.randn(11, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (7,), generator=generator)
    for pick in (lambda out: out, lambda out: out[0], lambda out: out[1]):
        assert torch.autograd.gradcheck(
            lambda h, w, b, pick=pick: pick(token_statistics(h, w, b, labels, softcap, 3)), (hidden, weight, bias)
        )


def saved_for_backward(compute) -> list[int]:
    """Element counts of every tensor autograd saves while `compute()` runs."""
    sizes: list[int] = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return sizes


def test_no_logits_sized_tensor_is_kept_for_backward():
    """The memory claim, structurally: the chunked path saves nothing of `[tokens, V]` size, the full path does."""
    hidden, weight, bias, labels = random_batch(seed=3)
    response_tokens = int((labels != IGNORE_INDEX).sum())
    logits_size = response_tokens * VOCAB
    chunked = saved_for_backward(lambda: chunked_sequence_statistics(hidden, weight, bias, labels, 4.0, 4))
    full = saved_for_backward(lambda: full_statistics(hidden, weight, bias, labels, 4.0))
    assert max(chunked) == weight.numel() < logits_size  # the weight itself (a reference, not a copy) is the largest
    assert max(full) >= logits_size


def test_misaligned_inputs_fail():
    hidden, weight, bias, labels = random_batch(seed=1)
    with pytest.raises(ValueError, match="do not align"):
        chunked_sequence_statistics(hidden, weight, bias, labels[:, 1:], None, 4)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        token_statistics(hidden[0], weight, bias, labels[0].clamp(min=0), None, 0)
