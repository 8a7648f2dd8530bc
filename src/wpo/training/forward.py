"""One forward pass over a chosen+rejected batch → per-sequence statistics for each half."""

from __future__ import annotations

import logging

import torch
from accelerate.utils import extract_model_from_parallel

from wpo.errors import NonFiniteError, WpoError
from wpo.training.chunked_loss import chunked_sequence_statistics
from wpo.training.loss import IGNORE_INDEX, SequenceStatistics, sequence_statistics, soft_cap
from wpo.training.tokenize import NO_SHARING, PairBatch, PromptSharing

log = logging.getLogger(__name__)


def split_statistics(stats: SequenceStatistics, pair_count: int) -> tuple[SequenceStatistics, SequenceStatistics]:
    halves = [slice(0, pair_count), slice(pair_count, 2 * pair_count)]
    chosen, rejected = (
        SequenceStatistics(stats.logps[rows], stats.aligned_logps[rows], stats.token_counts[rows]) for rows in halves
    )
    return chosen, rejected


def require_finite(what: str, tensor: torch.Tensor, where: str = "") -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(f"non-finite {what}{where}")


def pair_statistics(model, batch: PairBatch, *, loss_chunk_size: int) -> tuple[SequenceStatistics, SequenceStatistics]:
    """Chosen and rejected statistics from one concatenated forward pass.

    `loss_chunk_size > 0` (the default recipe) projects only the response tokens' final hidden states, that many at a
    time, so no `[B, T, V]` logits ever exist (`wpo.training.chunked_loss`). `0` is the plain path, kept as the reference:
    the model computes logits from the shortest prompt's last token on (`logits_to_keep`) and applies Gemma-2's
    final-logit soft-capping itself, so the logits reaching the loss are already capped.
    """
    if loss_chunk_size == 0:
        output = model(**model_inputs(model, batch), logits_to_keep=batch.logits_to_keep, use_cache=False)
        stats = sequence_statistics(response_slots(output.logits, batch), batch.labels)
    else:
        stats = _chunked_statistics(model, batch, loss_chunk_size)
    require_finite("log-probs (the model's logits are not finite)", stats.logps.detach())
    require_finite("log-probs (the model's logits are not finite)", stats.aligned_logps.detach())
    return split_statistics(stats, batch.pair_count)


def _chunked_statistics(model, batch: PairBatch, chunk_size: int) -> SequenceStatistics:
    # The top-level call, not the decoder alone, so that wrappers' forward hooks (DDP, FSDP) run. It computes logits
    # for one position only, which serve to check that the hidden state and the head reproduce the model's logits.
    output = model(
        **model_inputs(model, batch),
        logits_to_keep=1,
        output_hidden_states=-1,  # only the last one, which is after the final norm
        use_cache=False,
    )
    head, softcap = output_projection(model)
    last_hidden = output.hidden_states[-1]
    hidden = response_slots(last_hidden[:, -batch.logits_to_keep :], batch)

    def head_forward(
        hidden: torch.Tensor, final_position: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            require_finite("logits", output.logits[:, -1])
            recomputed = soft_cap(torch.nn.functional.linear(final_position, head.weight, head.bias).float(), softcap)
            if not torch.allclose(recomputed, output.logits[:, -1].float(), rtol=1e-2, atol=1e-2):
                raise WpoError(
                    "the model's logits are not softcap(final hidden state @ output weight): it scales its logits in "
                    "a way the chunked loss does not reproduce; set train.loss_chunk_size: 0"
                )
        stats = chunked_sequence_statistics(hidden, head.weight, head.bias, labels, softcap, chunk_size)
        return stats.logps, stats.aligned_logps

    logps, aligned_logps = call_as_forward(head, head_forward, hidden, last_hidden[:, -1].detach(), batch.labels)
    return SequenceStatistics(logps, aligned_logps, (batch.labels != IGNORE_INDEX).sum(-1))


def response_slots(per_position: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """`[2B, T, ...]` aligned with `batch.labels`, from the last `logits_to_keep` positions' values `[rows, K, ...]`
    (the padded layout's rows already are)."""
    return per_position.flatten(0, 1)[batch.response_positions] if batch.shares_prompts else per_position


def model_inputs(model, batch: PairBatch) -> dict[str, torch.Tensor]:
    """The model's keyword inputs for `batch`: a shared-prompt batch's boolean mask is turned into the additive one
    eager attention adds to its scores (SDPA takes the boolean mask as it is)."""
    if not batch.shares_prompts:
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    mask = batch.attention_mask
    if attention_implementation(model) == "eager":
        blocked = torch.finfo(torch.float32).min
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, blocked)
    return {"input_ids": batch.input_ids, "attention_mask": mask, "position_ids": batch.position_ids}


def text_config(model):
    """The (text) config of the model inside any wrapper (DDP, DeepSpeed, PEFT)."""
    return extract_model_from_parallel(model).config.get_text_config()


def attention_implementation(model) -> str:
    return text_config(model)._attn_implementation


def prompt_sharing(model, mode: str, max_length: int) -> PromptSharing:
    """`train.share_prompts` for this model: never where it cannot take the mask (logged), else the FLOP counts
    `PromptSharing` weighs the two layouts by."""
    problem = None if mode == "never" else prompt_sharing_problem(model, max_length)
    if problem:
        log.warning(
            "train.share_prompts: the model cannot share a prompt between its answers (%s); each answer "
            "gets its own padded row",
            problem,
        )
    if mode == "never" or problem:
        return NO_SHARING
    unwrapped = extract_model_from_parallel(model)
    embeddings = {id(layer.weight) for layer in (unwrapped.get_input_embeddings(), unwrapped.get_output_embeddings())}
    body = sum(p.numel() for p in unwrapped.parameters() if p.ndim >= 2 and id(p) not in embeddings)
    config = text_config(model)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 2 * config.num_hidden_layers * config.num_attention_heads * head_dim  # scores, then the mix
    log.info(
        "prompts: computed once for both of their answers %s (train.share_prompts: %s)",
        "in every batch" if mode == "always" else "where that costs fewer FLOPs",
        mode,
    )
    return PromptSharing(mode, weights_per_position=body, attention_per_pair=attention)


def prompt_sharing_problem(model, max_length: int) -> str | None:
    """Why the model cannot take a shared-prompt batch's custom mask (None if it can): only eager and SDPA attention
    apply a 4-D mask as given, and a sliding-window layer would see past its window under it."""
    implementation = attention_implementation(model)
    if implementation not in ("eager", "sdpa"):
        return f"its attention implementation {implementation!r} does not take a custom mask"
    config = text_config(model)
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < max_length:
        return f"it has {window}-token sliding-window attention, shorter than train.max_length {max_length}"
    return None


def call_as_forward(module: torch.nn.Module, forward, *args):
    """`forward(*args)` run as `module`'s own forward, inside the hooks a wrapper put on the module.

    A wrapper that shards the output layer's weight (DeepSpeed ZeRO-3, FSDP) gathers it in a pre-forward hook, frees
    it after the forward, and gathers it again when the gradient reaches the forward's outputs — as for any layer. So
    the chunked loss, run here, reads the whole weight in its forward and in the backward that recomputes the logits,
    and the weight's gradient goes back to the shards. Without a wrapper the hooks are absent and this is a call.
    """
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        return module(*args)
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def output_projection(model) -> tuple[torch.nn.Linear, float | None]:
    """The model's output layer and its final-logit soft-cap (Gemma-2's; None for most models)."""
    unwrapped = extract_model_from_parallel(model)
    head = unwrapped.get_output_embeddings()
    # FSDP2 subclasses the layer's class to add its hooks; a quantized or adapted layer replaces the forward
    if not isinstance(head, torch.nn.Linear) or type(head).forward is not torch.nn.Linear.forward:
        raise WpoError(
            f"the output layer is a {type(head).__module__}.{type(head).__qualname__}, not a torch.nn.Linear (an "
            "adapter or quantization on lm_head?): the chunked loss reads its weight directly; set "
            "train.loss_chunk_size: 0"
        )
    softcap = getattr(unwrapped.config.get_text_config(), "final_logit_softcapping", None)
    return head, softcap
