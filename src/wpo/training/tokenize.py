"""Pairs → token ids, and token ids → chosen+rejected batches (padded rows, or a row per pair sharing its prompt).

The response is every token the chat template emits after the prompt rendered with `add_generation_prompt=True`,
end-of-turn tokens included. Prompt and response are tokenized separately (so a merge across the boundary can
never shift it), the prompt is truncated from the left to `max_prompt_length`, then the response so the pair fits
`max_length`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch

from wpo.data.io import BadRecordPolicy
from wpo.data.schemas import Pair, RecordInvalid
from wpo.errors import DataError
from wpo.models import ChatTemplateError, apply_chat_template
from wpo.training.loss import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedPair:
    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source_chosen: str | None = None
    source_rejected: str | None = None
    weight: float | None = None  # the pair's own `weight` field, multiplied into its loss

    @property
    def token_count(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    @property
    def kind(self) -> str:
        """What the weights are reported by: `<source of the chosen> vs <source of the rejected>`."""
        return f"{self.source_chosen or 'unknown'} vs {self.source_rejected or 'unknown'}"


@dataclass(frozen=True)
class TokenizedPairs:
    pairs: list[TokenizedPair]
    truncated_prompts: int
    truncated_responses: int

    def digest(self) -> str:
        """A hash of every token id: identical exactly when the model would see identical inputs."""
        digest = hashlib.sha256()
        for pair in self.pairs:
            for ids in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids):
                digest.update(len(ids).to_bytes(4, "little"))
                digest.update(b"".join(i.to_bytes(4, "little") for i in ids))
        return digest.hexdigest()


def render_response(tokenizer, prompt: list[dict[str, str]], response: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with the generation prompt) and of the assistant turn that follows it."""
    try:
        prompt_text = apply_chat_template(tokenizer, prompt, add_generation_prompt=True, tokenize=False)
        full_text = apply_chat_template(
            tokenizer, prompt + [{"role": "assistant", "content": response}], tokenize=False
        )
    except ChatTemplateError as exc:
        raise RecordInvalid("chat_template_error", str(exc)) from None
    if not full_text.startswith(prompt_text):
        raise RecordInvalid(
            "template_mismatch",
            "the chat template's rendering of the conversation does not start with its rendering of the prompt",
        )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    return list(prompt_ids), list(response_ids)


def tokenize_pairs(
    pairs: list[Pair],
    tokenizer,
    *,
    max_length: int,
    max_prompt_length: int | None,
    policy: BadRecordPolicy,
) -> TokenizedPairs:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("the tokenizer has no chat template; WPO trains on chat-formatted pairs")
    tokenized = []
    truncated_prompts = truncated_responses = 0
    for pair in pairs:
        where = f"{pair.where} (pair {pair.id})" if pair.where else f"pair {pair.id}"
        try:
            prompt_ids, chosen_ids = render_response(tokenizer, pair.prompt, pair.chosen)
            _, rejected_ids = render_response(tokenizer, pair.prompt, pair.rejected)
        except RecordInvalid as exc:
            policy.reject(where, exc.reason, exc.message)
            continue
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            prompt_ids = prompt_ids[-max_prompt_length:]
            truncated_prompts += 1
        if len(prompt_ids) >= max_length:
            policy.reject(
                where,
                "prompt_too_long",
                f"prompt has {len(prompt_ids)} tokens, leaving no room for a response within "
                f"max_length {max_length} (set train.max_prompt_length to truncate it)",
            )
            continue
        room = max_length - len(prompt_ids)
        if len(chosen_ids) > room or len(rejected_ids) > room:
            truncated_responses += 1
        tokenized.append(
            TokenizedPair(
                pair.id,
                prompt_ids,
                chosen_ids[:room],
                rejected_ids[:room],
                source_chosen=pair.source_chosen,
                source_rejected=pair.source_rejected,
                weight=pair.weight,
            )
        )
    return TokenizedPairs(tokenized, truncated_prompts, truncated_responses)


@dataclass
class PairBatch:
    """`2B` sequences' inputs, and their response labels as `[2B, T]`, chosen rows first then rejected.

    Two layouts feed the same statistics. Padded: `2B` right-padded rows (prompt + one answer each), `attention_mask`
    `[2B, L]`; `labels[:, t]` is the token predicted at position `start + t`, so it aligns with logits computed for the
    last `logits_to_keep` positions only. Shared prompt: a row per pair holding its prompt once, then its chosen and
    its rejected answer; `attention_mask` is a boolean `[B, 1, L, L]` mask under which an answer sees the prompt and
    its own earlier tokens only, `position_ids` restart both answers where the prompt ends, and
    `response_positions[s, t]` is the slot, among the rows' last `logits_to_keep` positions flattened, whose hidden
    state predicts `labels[s, t]`. The model computes each prompt once instead of twice.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    logits_to_keep: int
    pair_count: int
    token_count: int  # tokens the model computes, padding excluded
    position_ids: torch.Tensor | None = None
    response_positions: torch.Tensor | None = None

    @property
    def shares_prompts(self) -> bool:
        return self.response_positions is not None

    def to(self, device: torch.device) -> PairBatch:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return PairBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.labels),
            self.logits_to_keep,
            self.pair_count,
            self.token_count,
            move(self.position_ids),
            move(self.response_positions),
        )


@dataclass(frozen=True)
class PromptSharing:
    """Which layout a batch gets: `never` padded rows, `always` shared-prompt rows, `auto` whichever costs fewer
    multiply-adds by a model's weights per position (its body, the output layer aside: that projects the same
    response tokens either way) and attention per query-key pair. A shared row computes its prompt once, but its mask
    is dense, so attention cannot skip the blocks above the diagonal as a causal one does: with short prompts and
    long answers (1024 + 1024 tokens on SmolLM2-135M) two padded rows are cheaper (benchmarks/train_step.py)."""

    mode: Literal["auto", "always", "never"]
    weights_per_position: float = 0.0
    attention_per_pair: float = 0.0

    def applies_to(self, pairs: list[TokenizedPair]) -> bool:
        if self.mode != "auto":
            return self.mode == "always"
        padded = max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs)
        shared = max(p.token_count for p in pairs)
        padded_cost = 2 * (padded * self.weights_per_position + padded * padded / 2 * self.attention_per_pair)
        shared_cost = shared * self.weights_per_position + shared * shared * self.attention_per_pair
        return shared_cost < padded_cost


NO_SHARING = PromptSharing("never")


# what each position of a shared-prompt row holds
PADDING, PROMPT, CHOSEN, REJECTED = range(4)


def collate_pairs(pairs: list[TokenizedPair], pad_token_id: int, *, share_prompts: bool = False) -> PairBatch:
    if share_prompts:
        return _collate_shared_prompts(pairs, pad_token_id)
    return _collate_padded(pairs, pad_token_id)


def _collate_padded(pairs: list[TokenizedPair], pad_token_id: int) -> PairBatch:
    sequences = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    length = max(len(prompt) + len(response) for prompt, response in sequences)
    first_logit = min(len(prompt) for prompt, _ in sequences) - 1
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, response) in enumerate(sequences):
        ids = prompt + response
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        # logits at position t predict token t + 1: response token at k is labelled at k - 1
        labels[row, len(prompt) - 1 : len(ids) - 1] = torch.tensor(response)
    return PairBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels[:, first_logit:],
        logits_to_keep=length - first_logit,
        pair_count=len(pairs),
        token_count=int(attention_mask.sum()),
    )


def _collate_shared_prompts(pairs: list[TokenizedPair], pad_token_id: int) -> PairBatch:
    # A row per pair rather than one row for the whole batch: attention cost grows with the square of a row's length
    # and the mask cannot skip other pairs' tokens; padding the pairs' rows to the longest costs less here.
    width = max(p.token_count for p in pairs)
    first_logit = min(len(p.prompt_ids) for p in pairs) - 1  # as in the padded layout: no logits before it
    kept = width - first_logit
    input_ids = torch.full((len(pairs), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(pairs), width), dtype=torch.long)
    segments = torch.full((len(pairs), width), PADDING, dtype=torch.long)
    answers: dict[int, list[tuple[list[int], list[int]]]] = {CHOSEN: [], REJECTED: []}  # (labels, predicting slots)
    for row, pair in enumerate(pairs):
        prompt_length = len(pair.prompt_ids)
        ids, positions, kinds = list(pair.prompt_ids), list(range(prompt_length)), [PROMPT] * prompt_length
        for kind, answer in ((CHOSEN, pair.chosen_ids), (REJECTED, pair.rejected_ids)):
            # the prompt's last token predicts the answer's first token; answer token k predicts token k + 1
            predicting = [prompt_length - 1, *range(len(ids), len(ids) + len(answer) - 1)]
            # as slots among the rows' last `kept` positions, flattened
            answers[kind].append((answer, [row * kept + position - first_logit for position in predicting]))
            ids += answer
            positions += range(prompt_length, prompt_length + len(answer))
            kinds += [kind] * len(answer)
        input_ids[row, : len(ids)] = torch.tensor(ids)
        position_ids[row, : len(ids)] = torch.tensor(positions)
        segments[row, : len(ids)] = torch.tensor(kinds)
    responses = answers[CHOSEN] + answers[REJECTED]  # the statistics' row order, as the padded layout's
    longest = max(len(answer) for answer, _ in responses)
    labels = torch.full((len(responses), longest), IGNORE_INDEX, dtype=torch.long)
    response_positions = torch.zeros((len(responses), longest), dtype=torch.long)
    for row, (answer, slots) in enumerate(responses):
        labels[row, : len(answer)] = torch.tensor(answer)
        response_positions[row, : len(answer)] = torch.tensor(slots)
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    visible = ((query == key) | (key == PROMPT)) & (query != PADDING) & (key != PADDING)
    visible &= torch.ones(width, width, dtype=torch.bool).tril()
    visible |= torch.eye(width, dtype=torch.bool)  # padding sees itself: a row that sees nothing would be NaN
    return PairBatch(
        input_ids=input_ids,
        attention_mask=visible.unsqueeze(1),
        labels=labels,
        logits_to_keep=kept,
        pair_count=len(pairs),
        token_count=int((segments != PADDING).sum()),
        position_ids=position_ids,
        response_positions=response_positions,
    )
