"""The WPO loss against hand-worked numbers and against a plain re-statement of the paper code's formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from wpo.training.loss import (
    IGNORE_INDEX,
    SequenceStatistics,
    preference_loss,
    sequence_statistics,
    soft_cap,
    wpo_weight,
)

LN2 = math.log(2.0)


def two_token_logits() -> torch.Tensor:
    """A 3-word vocabulary, 2 response tokens.

    Position 1 has logits [0, 0, 0]: p = [1/3, 1/3, 1/3], Σp² = 1/3.
    Position 2 has logits [ln 2, 0, 0]: p = [1/2, 1/4, 1/4], Σp² = 1/4 + 1/16 + 1/16 = 3/8.
    """
    return torch.tensor([[[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]]], dtype=torch.float64)


def test_sequence_statistics_hand_worked():
    """Labels [0, 0]: log p = ln(1/3) + ln(1/2) = -ln 6.

    Aligned token log-probs: ln(1/3) - ln(1/3) = 0 and ln(1/2) - ln(3/8) = ln(4/3); their mean is ln(4/3) / 2.
    """
    stats = sequence_statistics(two_token_logits(), torch.tensor([[0, 0]]))
    assert_close(stats.logps, torch.tensor([-math.log(6.0)], dtype=torch.float64))
    assert_close(stats.aligned_logps, torch.tensor([0.5 * math.log(4.0 / 3.0)], dtype=torch.float64))
    assert stats.token_counts.tolist() == [2]


def test_ignored_positions_do_not_count():
    """With the first label ignored only position 2 counts: log p = ln(1/4) for label 1, aligned ln(2/3)."""
    stats = sequence_statistics(two_token_logits(), torch.tensor([[IGNORE_INDEX, 1]]))
    assert_close(stats.logps, torch.tensor([math.log(0.25)], dtype=torch.float64))
    assert_close(stats.aligned_logps, torch.tensor([math.log(2.0 / 3.0)], dtype=torch.float64))
    assert stats.token_counts.tolist() == [1]


def test_wpo_weight_hand_worked_and_clamp():
    """Chosen labels [0, 0] → a = ln(4/3)/2; rejected labels [0, 1] → a = ln(2/3)/2.

    w = exp(ln(4/3)/2 + ln(2/3)/2) = sqrt(8/9) ≈ 0.9428 (below 1: the clamp changes nothing).
    Two chosen-like sequences with a = ln(4/3) and ln(4/3)/2 give exp(1.5 ln(4/3)) = (4/3)^1.5 ≈ 1.5396 > 1:
    clamped to 1, and only `clamp=False` keeps it.
    """
    logits = two_token_logits().repeat(2, 1, 1)
    chosen, rejected = sequence_statistics(logits, torch.tensor([[0, 0], [0, 1]])).aligned_logps
    assert_close(wpo_weight(chosen, rejected), torch.tensor(math.sqrt(8.0 / 9.0), dtype=torch.float64))

    strong = sequence_statistics(two_token_logits(), torch.tensor([[IGNORE_INDEX, 0]])).aligned_logps
    unclamped = torch.tensor((4.0 / 3.0) ** 1.5, dtype=torch.float64)
    assert_close(wpo_weight(strong, chosen, clamp=False)[0], unclamped)
    assert wpo_weight(strong, chosen, clamp=True).item() == 1.0


def stats(logps, aligned, counts) -> SequenceStatistics:
    return SequenceStatistics(
        torch.tensor(logps, dtype=torch.float64),
        torch.tensor(aligned, dtype=torch.float64),
        torch.tensor(counts),
    )


def test_sigmoid_loss_hand_worked():
    """z = (-4 - -6) - (-5 - -5) = 2, β = 0.5 → βz = 1; w = exp(-0.3 + -0.4) = exp(-0.7).

    loss = w · -ln σ(1) = exp(-0.7) · ln(1 + e^-1); rewards: chosen 0.5·(-4 - -5) = 0.5, rejected 0.5·(-6 - -5) = -0.5.
    With ε = 0.1: w · [-(0.9) ln σ(1) - 0.1 ln σ(-1)] = w · [0.9 ln(1 + e^-1) + 0.1 ln(1 + e)].
    """
    chosen, rejected = stats([-4.0], [-0.3], [3]), stats([-6.0], [-0.4], [5])
    ref_c, ref_r = torch.tensor([-5.0], dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64)
    weight = math.exp(-0.7)
    out = preference_loss(chosen, rejected, ref_c, ref_r, loss_type="sigmoid", beta=0.5)
    assert out.loss.item() == pytest.approx(weight * math.log1p(math.exp(-1.0)), rel=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.5)
    assert out.rejected_rewards.item() == pytest.approx(-0.5)
    smoothed = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5, label_smoothing=0.1)
    expected = weight * (0.9 * math.log1p(math.exp(-1.0)) + 0.1 * math.log1p(math.exp(1.0)))
    assert smoothed.loss.item() == pytest.approx(expected, rel=1e-12)
    unweighted = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5, weighting="none")
    assert unweighted.loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-12)


def test_sft_term_hand_worked():
    """RPO's term on the same pair (z = 2, β = 0.5, w = exp(-0.7)): the chosen answer has logp -4 over 3 tokens, so
    its NLL per token is 4/3; with α = 0.5 each pair's loss is w · [ln(1 + e^-1) + 0.5 · 4/3]. The term takes the
    WPO weight like the preference loss, and its gradient reaches the chosen log-prob: d/d logp_w of w·α·(-logp_w/3)
    is -w·α/3 on top of the sigmoid loss's -w·β·σ(-βz)."""
    logps = torch.tensor([-4.0], dtype=torch.float64, requires_grad=True)
    chosen = SequenceStatistics(logps, torch.tensor([-0.3], dtype=torch.float64), torch.tensor([3]))
    rejected = stats([-6.0], [-0.4], [5])
    ref_c, ref_r = torch.tensor([-5.0], dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64)
    weight = math.exp(-0.7)
    out = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5, sft_weight=0.5)
    assert out.loss.item() == pytest.approx(weight * (math.log1p(math.exp(-1.0)) + 0.5 * 4 / 3), rel=1e-12)
    out.loss.backward()
    sigmoid_minus_one = 1 / (1 + math.e)
    assert logps.grad.item() == pytest.approx(-weight * (0.5 * sigmoid_minus_one + 0.5 / 3), rel=1e-12)
    plain = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5, sft_weight=0.5, weighting="none")
    assert plain.loss.item() == pytest.approx(math.log1p(math.exp(-1.0)) + 0.5 * 4 / 3, rel=1e-12)


def test_robust_and_simpo_hand_worked():
    """Same pair (z = 2, β = 0.5, w = exp(-0.7)); chosen logp -4 over 2 tokens, rejected -6 over 3.

    Robust, ε = 0.1: [-(0.9) ln σ(1) + 0.1 ln σ(-1)] / 0.8 = [0.9 ln(1 + e^-1) - 0.1 ln(1 + e)] / 0.8.
    SimPO, γ = 0.5: z = -4/2 - -6/3 = 0, so -ln σ(β·0 - γ) = ln(1 + e^0.5).
    """
    chosen, rejected = stats([-4.0], [-0.3], [2]), stats([-6.0], [-0.4], [3])
    ref_c, ref_r = torch.tensor([-5.0], dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64)
    weight = math.exp(-0.7)
    robust = preference_loss(chosen, rejected, ref_c, ref_r, loss_type="robust", beta=0.5, label_smoothing=0.1)
    expected = (0.9 * math.log1p(math.exp(-1.0)) - 0.1 * math.log1p(math.exp(1.0))) / 0.8
    assert robust.loss.item() == pytest.approx(weight * expected, rel=1e-12)
    simpo = preference_loss(chosen, rejected, None, None, loss_type="length_normalized", beta=0.5, simpo_gamma=0.5)
    assert simpo.loss.item() == pytest.approx(weight * math.log1p(math.exp(0.5)), rel=1e-12)


def test_other_losses_hand_worked():
    """Same pair (z = 2, w = exp(-0.7)), β = 0.5.

    IPO: (z - 1/(2β))² = (2 - 1)² = 1. Hinge: max(0, 1 - βz) = 0; with β = 0.25: 1 - 0.5 = 0.5.
    Length-normalized (no reference): z = -4/2 - -6/3 = 0 → -ln σ(0) = ln 2.
    """
    chosen, rejected = stats([-4.0], [-0.3], [2]), stats([-6.0], [-0.4], [3])
    ref_c, ref_r = torch.tensor([-5.0], dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64)
    weight = math.exp(-0.7)
    ipo = preference_loss(chosen, rejected, ref_c, ref_r, loss_type="ipo", beta=0.5)
    assert ipo.loss.item() == pytest.approx(weight * 1.0, rel=1e-12)
    assert preference_loss(chosen, rejected, ref_c, ref_r, loss_type="hinge", beta=0.5).loss.item() == 0.0
    hinge = preference_loss(chosen, rejected, ref_c, ref_r, loss_type="hinge", beta=0.25)
    assert hinge.loss.item() == pytest.approx(weight * 0.5, rel=1e-12)
    free = preference_loss(chosen, rejected, None, None, loss_type="length_normalized", beta=0.5)
    assert free.loss.item() == pytest.approx(weight * LN2, rel=1e-12)


def test_a_pairs_own_weight_and_the_weight_scale_multiply_its_loss():
    """Two pairs, β = 0.5. Pair A as above: z = 2, w = exp(-0.3 - 0.4) = exp(-0.7) ≈ 0.49659, unweighted loss
    ln(1 + e^-1) ≈ 0.31326. Pair B: z = 0, unweighted ln 2 ≈ 0.69315, a_w + a_l = 0.2 + 0.1 = 0.3 ≥ 0, so its weight
    exp(0.3) is clamped to 1 (and reported clamped).

    Pair A's own weight 2: loss = (2 · e^-0.7 · ln(1 + e^-1) + 1 · ln 2) / 2 ≈ (0.31112 + 0.69315) / 2 ≈ 0.50213.
    Under weighting none the own weight still counts: (2 ln(1 + e^-1) + ln 2) / 2 ≈ 0.65984.
    A weight scale s multiplies WPO's weight: s = 2 / (e^-0.7 + 1) makes the weights average 1, and the loss
    s · (e^-0.7 ln(1 + e^-1) + ln 2) / 2 ≈ 1.33638 · 0.42435 ≈ 0.56710. The reported weights stay WPO's own.
    """
    chosen, rejected = stats([-4.0, -5.0], [-0.3, 0.2], [3, 3]), stats([-6.0, -5.0], [-0.4, 0.1], [5, 5])
    ref_c, ref_r = torch.tensor([-5.0, -5.0], dtype=torch.float64), torch.tensor([-5.0, -5.0], dtype=torch.float64)
    weight_a, loss_a, loss_b = math.exp(-0.7), math.log1p(math.exp(-1.0)), LN2
    own = torch.tensor([2.0, 1.0], dtype=torch.float64)

    weighted = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5, pair_weights=own)
    assert weighted.loss.item() == pytest.approx((2 * weight_a * loss_a + loss_b) / 2, rel=1e-12)
    assert weighted.loss.item() == pytest.approx(0.50213, abs=1e-5)
    assert_close(weighted.weights, torch.tensor([weight_a, 1.0], dtype=torch.float64))
    assert weighted.clamped.tolist() == [False, True]

    plain = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5, weighting="none", pair_weights=own)
    assert plain.loss.item() == pytest.approx((2 * loss_a + loss_b) / 2, rel=1e-12)
    assert plain.clamped.tolist() == [False, False]

    scale = 2 / (weight_a + 1)
    scaled = preference_loss(
        chosen, rejected, ref_c, ref_r, beta=0.5, weight_scale=torch.tensor(scale, dtype=torch.float64)
    )
    assert scaled.loss.item() == pytest.approx(scale * (weight_a * loss_a + loss_b) / 2, rel=1e-12)
    assert scaled.loss.item() == pytest.approx(0.56710, abs=1e-5)
    assert (scaled.weights * scale).mean().item() == pytest.approx(1.0, rel=1e-12)
    assert_close(scaled.weights, weighted.weights)

    unscaled = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5)
    ones = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5, pair_weights=torch.ones(2, dtype=torch.float64))
    assert torch.equal(ones.pair_losses, unscaled.pair_losses)  # weight 1 changes no bit


def test_reference_losses_need_reference_logps():
    chosen, rejected = stats([-4.0], [-0.3], [2]), stats([-6.0], [-0.4], [3])
    with pytest.raises(ValueError, match="needs reference log-probs"):
        preference_loss(chosen, rejected, None, None, loss_type="sigmoid")


def paper_formula(policy_logits, labels, ref_chosen, ref_rejected, beta):
    """The released code's recipe, written plainly: softmax → Σ p² → log, mean over response tokens, clamp, DPO."""
    mask = labels != IGNORE_INDEX
    safe = labels.clamp(min=0)
    log_probs = torch.log_softmax(policy_logits, dim=-1)
    token_logps = log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    probs = torch.softmax(policy_logits, dim=-1)
    aligned = token_logps - torch.log((probs**2).sum(-1))
    logps = (token_logps * mask).sum(-1)
    aligned_mean = (aligned * mask).sum(-1) / mask.sum(-1)
    half = logps.shape[0] // 2
    weights = torch.clamp(torch.exp(aligned_mean[:half] + aligned_mean[half:]), max=1.0).detach()
    z = (logps[:half] - logps[half:]) - (ref_chosen - ref_rejected)
    return (weights * -torch.nn.functional.logsigmoid(beta * z)).mean(), weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_paper_formula_on_random_batches(seed):
    generator = torch.Generator().manual_seed(seed)
    pairs, length, vocab = 4, 7, 11
    logits = torch.randn(2 * pairs, length, vocab, generator=generator) * 3.0
    labels = torch.randint(0, vocab, (2 * pairs, length), generator=generator)
    labels[:, :2] = IGNORE_INDEX  # prompt positions
    labels[1, -3:] = IGNORE_INDEX  # padding
    ref = torch.randn(2 * pairs, generator=generator) * 5 - 20
    expected, expected_weights = paper_formula(logits, labels, ref[:pairs], ref[pairs:], beta=0.1)

    seq = sequence_statistics(logits, labels)
    chosen = SequenceStatistics(seq.logps[:pairs], seq.aligned_logps[:pairs], seq.token_counts[:pairs])
    rejected = SequenceStatistics(seq.logps[pairs:], seq.aligned_logps[pairs:], seq.token_counts[pairs:])
    out = preference_loss(chosen, rejected, ref[:pairs], ref[pairs:], beta=0.1)
    assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)
    assert_close(out.weights, expected_weights, atol=1e-6, rtol=1e-6)


def test_log_space_alignment_survives_where_probabilities_underflow():
    """With logit gaps of 200, p² underflows in float32; logsumexp(2z) - 2 logsumexp(z) stays finite (≈ 0)."""
    logits = torch.tensor([[[200.0, 0.0, -200.0]]])
    out = sequence_statistics(logits, torch.tensor([[0]]))
    assert torch.isfinite(out.aligned_logps).all()
    assert out.aligned_logps.item() == pytest.approx(0.0, abs=1e-5)


def test_gradient_flows_to_policy_but_not_through_weight():
    """The gradient equals that of `w.item() * unweighted_loss`: the weight is a constant to autograd."""
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, 5, 6, generator=generator) * 2).requires_grad_(True)
    labels = torch.randint(0, 6, (4, 5), generator=generator)
    ref = torch.tensor([-9.0, -8.0])

    def loss_of(logits, weighting):
        seq = sequence_statistics(logits, labels)
        chosen = SequenceStatistics(seq.logps[:2], seq.aligned_logps[:2], seq.token_counts[:2])
        rejected = SequenceStatistics(seq.logps[2:], seq.aligned_logps[2:], seq.token_counts[2:])
        return preference_loss(chosen, rejected, ref, ref + 1, beta=0.2, weighting=weighting)

    weighted = loss_of(logits, "wpo")
    (grad,) = torch.autograd.grad(weighted.loss, logits)
    assert grad.abs().sum() > 0
    assert not weighted.weights.requires_grad

    constant = loss_of(logits, "none")
    (expected,) = torch.autograd.grad((weighted.weights * constant.pair_losses).mean(), logits)
    assert_close(grad, expected)


def test_soft_cap_is_applied_before_softmax():
    logits = torch.randn(2, 3, 9) * 10
    labels = torch.randint(0, 9, (2, 3))
    capped = sequence_statistics(logits, labels, softcap=5.0)
    manual = sequence_statistics(5.0 * torch.tanh(logits / 5.0), labels)
    assert_close(capped.logps, manual.logps)
    assert_close(capped.aligned_logps, manual.aligned_logps)
    assert soft_cap(logits, None) is logits


def test_the_loss_module_stands_alone_and_names_what_the_config_accepts():
    """`wpo.training.loss` imports nothing of the project's (tensors in, tensors out), and the losses it implements
    are exactly the ones `train.loss` accepts; the reference-free ones agree too."""
    import ast
    import typing
    from pathlib import Path

    import wpo.training.loss as loss_module
    from wpo import config

    tree = ast.parse(Path(loss_module.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name and name.split(".")[0] == "wpo"}, imported
    assert tuple(loss_module.LOSSES) == typing.get_args(config.LossType)
    assert loss_module.REFERENCE_FREE_LOSSES == config.REFERENCE_FREE_LOSSES
