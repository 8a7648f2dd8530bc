"""The WPO objective as pure functions of tensors.

Nothing here sees a model, a batch dict or a config: the trainer turns logits into per-sequence statistics with
`sequence_statistics`, and `preference_loss` turns those (plus precomputed reference log-probs) into the weighted
loss. Every formula is the one written in docs/design.md ("The method, exactly").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-2 final-logit soft-capping, `cap * tanh(z / cap)`; identity when the model has no cap."""
    if cap is None:
        return logits
    return cap * torch.tanh(logits / cap)


@dataclass(frozen=True)
class SequenceStatistics:
    """What the loss needs from one forward pass, one value per sequence.

    `logps` is the summed log-prob of the response tokens; `aligned_logps` is the mean over response tokens of
    `log p(t) - log sum_v p_v^2` (the paper code's "sampled alignment"); `token_counts` counts the response tokens.
    """

    logps: torch.Tensor
    aligned_logps: torch.Tensor
    token_counts: torch.Tensor


def sequence_statistics(logits: torch.Tensor, labels: torch.Tensor, softcap: float | None = None) -> SequenceStatistics:
    """Per-sequence statistics from next-token logits `[B, T, V]` and labels `[B, T]` already aligned to them.

    `labels[b, t]` is the token predicted by `logits[b, t]`; positions holding IGNORE_INDEX (prompt, padding) are not
    response tokens. `log sum_v p_v^2` is computed in log space as `logsumexp(2z) - 2 logsumexp(z)`, which never
    forms the probabilities and so cannot underflow to log(0).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not align")
    logits = soft_cap(logits.to(torch.promote_types(logits.dtype, torch.float32)), softcap)  # bf16 → fp32
    mask = labels != IGNORE_INDEX
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    log_normalizer = torch.logsumexp(logits, dim=-1)
    token_logps = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1) - log_normalizer
    log_sum_p_squared = torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * log_normalizer
    mask_f = mask.to(token_logps.dtype)
    token_counts = mask.sum(-1)
    logps = (token_logps * mask_f).sum(-1)
    aligned = ((token_logps - log_sum_p_squared) * mask_f).sum(-1) / token_counts.clamp(min=1)
    return SequenceStatistics(logps=logps, aligned_logps=aligned, token_counts=token_counts)


def wpo_weight(aligned_chosen: torch.Tensor, aligned_rejected: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """`exp(a(y_w) + a(y_l))`, clamped at 1 by default (the released code), and detached: the weight has no gradient."""
    weight = torch.exp(aligned_chosen.detach() + aligned_rejected.detach())
    return weight.clamp(max=1.0) if clamp else weight


def sigmoid_loss(logits: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO's loss on `z`, with conservative label smoothing ε: `-(1-ε) log σ(βz) - ε log σ(-βz)`."""
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)


def ipo_loss(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al.) on summed log-probs: `(z - 1/(2β))^2`, with β as the regularization strength τ."""
    return (logits - 1.0 / (2.0 * beta)) ** 2


def robust_loss(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024) for labels flipped with probability ε: an unbiased estimate of the clean
    loss, `[-(1-ε) log σ(βz) + ε log σ(-βz)] / (1 - 2ε)`."""
    eps = label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(beta * logits) + eps * F.logsigmoid(-beta * logits)) / (1.0 - 2.0 * eps)


def hinge_loss(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC-style hinge: `max(0, 1 - βz)`."""
    return torch.relu(1.0 - beta * logits)


def length_normalized_loss(logits: torch.Tensor, beta: float, label_smoothing: float, gamma: float) -> torch.Tensor:
    """SimPO on length-normalized log-probs with target margin γ: `-log σ(βz - γ)` (with label smoothing ε)."""
    return sigmoid_loss(logits - gamma / beta, beta, label_smoothing)


# Each loss on the margin z as (z, β, label smoothing ε, SimPO's γ) → per-pair loss; `train.loss` names one.
LOSSES: dict[str, Callable[[torch.Tensor, float, float, float], torch.Tensor]] = {
    "sigmoid": lambda z, beta, eps, gamma: sigmoid_loss(z, beta, eps),
    "robust": lambda z, beta, eps, gamma: robust_loss(z, beta, eps),
    "ipo": lambda z, beta, eps, gamma: ipo_loss(z, beta),
    "hinge": lambda z, beta, eps, gamma: hinge_loss(z, beta),
    "length_normalized": length_normalized_loss,
}
# Losses on the policy's own length-normalized log-probs: no reference model.
REFERENCE_FREE_LOSSES = frozenset({"length_normalized"})


@dataclass(frozen=True)
class PreferenceLoss:
    """Per-pair outputs of `preference_loss`; `loss` is their weighted mean, the number the optimizer sees."""

    loss: torch.Tensor
    pair_losses: torch.Tensor
    weights: torch.Tensor  # WPO's weight as the paper defines it: before `weight_scale` and the pairs' own weights
    clamped: torch.Tensor  # whether the unclamped weight `exp(a(y_w) + a(y_l))` reached the clamp at 1
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def preference_loss(
    chosen: SequenceStatistics,
    rejected: SequenceStatistics,
    reference_chosen_logps: torch.Tensor | None,
    reference_rejected_logps: torch.Tensor | None,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    weighting: Literal["wpo", "none"] = "wpo",
    clamp: bool = True,
    sft_weight: float = 0.0,
    simpo_gamma: float = 0.0,
    weight_scale: torch.Tensor | None = None,
    pair_weights: torch.Tensor | None = None,
) -> PreferenceLoss:
    """Weighted preference loss over a batch of pairs; every loss type takes the same WPO weight.

    `simpo_gamma` γ is SimPO's target margin for the reference-free loss: `-log σ(β z - γ)`.
    `sft_weight` α adds RPO's term, the chosen answer's negative log-likelihood per token, `α · (−logp(y_w) / |y_w|)`,
    to each pair's loss before the weight: it keeps the chosen answer likely (and its end-of-turn token), where a
    preference loss alone can lower both answers' likelihood and move the mass to degenerate text.
    `weight_scale` multiplies WPO's weights (`train.normalize_weights`: the step's pair count over their sum, so they
    average 1 over the step); `pair_weights` are the pairs' own `weight` fields, multiplied in with or without WPO's.
    `pair_losses` are already multiplied by every weight; `loss` is their mean over pairs. Rewards are the implicit
    DPO rewards `β (logp_π - logp_ref)` (for the reference-free loss, `β` times the length-normalized log-prob).
    """
    if loss_type in REFERENCE_FREE_LOSSES:
        chosen_scores = chosen.logps / chosen.token_counts.clamp(min=1)
        rejected_scores = rejected.logps / rejected.token_counts.clamp(min=1)
    else:
        if reference_chosen_logps is None or reference_rejected_logps is None:
            raise ValueError(f"loss_type {loss_type!r} needs reference log-probs")
        chosen_scores = chosen.logps - reference_chosen_logps
        rejected_scores = rejected.logps - reference_rejected_logps
    logits = chosen_scores - rejected_scores

    if loss_type not in LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSSES)}")
    unweighted = LOSSES[loss_type](logits, beta, label_smoothing, simpo_gamma)
    if sft_weight:
        unweighted = unweighted - sft_weight * chosen.logps / chosen.token_counts.clamp(min=1)

    if weighting == "wpo":
        weights = wpo_weight(chosen.aligned_logps, rejected.aligned_logps, clamp=clamp)
        clamped = (chosen.aligned_logps + rejected.aligned_logps).detach() >= 0  # exp(a_w + a_l) >= 1
    elif weighting == "none":
        weights = torch.ones_like(unweighted)
        clamped = torch.zeros_like(unweighted, dtype=torch.bool)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected 'wpo' or 'none'")
    applied = weights if weight_scale is None else weights * weight_scale
    if pair_weights is not None:
        applied = applied * pair_weights
    pair_losses = applied * unweighted
    return PreferenceLoss(
        loss=pair_losses.mean(),
        pair_losses=pair_losses,
        weights=weights,
        clamped=clamped,
        chosen_rewards=(beta * chosen_scores).detach(),
        rejected_rewards=(beta * rejected_scores).detach(),
    )
