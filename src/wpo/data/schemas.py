"""The four data contracts of docs/design.md as validated records.

Each `parse_*` takes a raw record and its location and returns a typed record or raises `RecordInvalid` with a
reason key (for skip counts) and a message; `load_*` applies a `BadRecordPolicy` to a whole source. Pairs are also
accepted in TRL's implicit-prompt form (`chosen`/`rejected` holding the whole conversation, `prompt` a string), as
published datasets such as wzhouad/gemma-2-ultrafeedback-hybrid ship them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from wpo.data.io import BadRecordPolicy, read_records

ROLES = ("system", "user", "assistant")


class RecordInvalid(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class RecordLeftOut(RecordInvalid):
    """A record the recipe asks to leave out (counted by reason), whatever on_bad_record says."""


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RecordInvalid("wrong_type", f"{name} must be a non-empty list of messages or a string")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RecordInvalid("wrong_type", f"{name}[{index}] must be an object with a string 'content'")
        if message.get("role") not in ROLES:
            raise RecordInvalid("wrong_role", f"{name}[{index}] has role {message.get('role')!r}; expected {ROLES}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _require(record: dict[str, Any], key: str) -> Any:
    if key not in record or record[key] is None:
        raise RecordInvalid("missing_field", f"missing field {key!r}")
    return record[key]


def _finite_or_none(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordInvalid("wrong_type", f"{key} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise RecordInvalid("non_finite_score", f"{key} is {value}; scores must be finite")
    return float(value)


def _pair_weight(record: dict[str, Any]) -> float | None:
    """A pair's own `weight`: absent or null is none; otherwise a finite number >= 0 (0 keeps the pair in its batch
    but takes it out of the loss)."""
    value = record.get("weight")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise RecordInvalid("bad_weight", f"weight must be a finite number >= 0 (got {value!r})")
    return float(value)


def _prompt_messages(value: Any, name: str) -> list[dict[str, str]]:
    messages = _messages(value, name)
    if messages[-1]["role"] != "user":
        raise RecordInvalid("wrong_role", f"the prompt's last message must be the user's, got {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
        raise RecordInvalid("empty_text", f"{name}[{len(messages) - 1}] (the user's message) is empty")
    return messages


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    score_chosen: float | None = None
    score_rejected: float | None = None
    source_chosen: str | None = None
    source_rejected: str | None = None
    weight: float | None = None  # the user's own weight, multiplied into the pair's loss; None: none given
    where: str | None = field(default=None, compare=False)  # file:line it was read from, for later errors

    def to_record(self) -> dict[str, Any]:
        """TRL's conversational preference format, plus our scores and sources (and the pair's own weight, only when
        it has one: an optional column, as the scores and sources are)."""
        record = {
            "id": self.id,
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
            "score_chosen": self.score_chosen,
            "score_rejected": self.score_rejected,
            "source_chosen": self.source_chosen,
            "source_rejected": self.source_rejected,
        }
        return record if self.weight is None else {**record, "weight": self.weight}


def _completion(value: Any, name: str, prompt: list[dict[str, str]]) -> str:
    if isinstance(value, str):
        text = value
    else:
        messages = _messages(value, name)
        if messages[: len(prompt)] == prompt and len(messages) > len(prompt):
            messages = messages[len(prompt) :]  # implicit-prompt form: the conversation repeats the prompt
        if len(messages) != 1:
            raise RecordInvalid("wrong_role", f"{name} must be one assistant message, got {len(messages)} messages")
        if messages[0]["role"] != "assistant":
            raise RecordInvalid("wrong_role", f"{name} must be an assistant message, got role {messages[0]['role']!r}")
        text = messages[0]["content"]
    if not text.strip():
        raise RecordInvalid("empty_text", f"{name} is empty")
    return text


def parse_pair(record: dict[str, Any], where: str) -> Pair:
    prompt = _prompt_messages(_require(record, "prompt"), "prompt")
    chosen = _completion(_require(record, "chosen"), "chosen", prompt)
    rejected = _completion(_require(record, "rejected"), "rejected", prompt)
    raw_id = record.get("id", record.get("prompt_id"))
    if raw_id is not None and (not isinstance(raw_id, str | int) or isinstance(raw_id, bool)):
        raise RecordInvalid("wrong_type", f"id must be a string, got {type(raw_id).__name__}")
    return Pair(
        id=str(raw_id) if raw_id is not None else where,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        score_chosen=_finite_or_none(record, "score_chosen"),
        score_rejected=_finite_or_none(record, "score_rejected"),
        source_chosen=record.get("source_chosen"),
        source_rejected=record.get("source_rejected"),
        weight=_pair_weight(record),
        where=where,
    )


@dataclass(frozen=True)
class LoadedPairs:
    pairs: list[Pair]
    records_read: int
    skipped: dict[str, int]


def load_pairs(source: str, policy: BadRecordPolicy) -> LoadedPairs:
    """Read and validate a pairs source. Chosen identical to rejected is always skipped (and counted)."""
    pairs: list[Pair] = []
    for item in parse_all(source, parse_pair, policy, unique_ids=True):
        if item.record.chosen == item.record.rejected:
            policy.skip(item.where, "identical_chosen_rejected", "chosen is identical to rejected")
            continue
        pairs.append(item.record)
    read = len(pairs) + sum(policy.skipped.values())
    return LoadedPairs(pairs=pairs, records_read=read, skipped=dict(policy.skipped))


@dataclass(frozen=True)
class PromptRecord:
    id: str
    messages: list[dict[str, str]]
    extra: dict[str, Any] = field(default_factory=dict)


def parse_prompt(record: dict[str, Any], where: str) -> PromptRecord:
    """The prompts contract; the form UltraFeedback-derived sets publish (`prompt_id` and a string `prompt`, no
    `messages`) is read as one user message."""
    if "messages" not in record and isinstance(record.get("prompt"), str) and "prompt_id" in record:
        record = {
            **{k: v for k, v in record.items() if k not in ("prompt", "prompt_id")},
            "id": record["prompt_id"],
            "messages": [{"role": "user", "content": record["prompt"]}],
        }
    raw_id = _require(record, "id")
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
        raise RecordInvalid("wrong_type", f"id must be a string, got {type(raw_id).__name__}")
    messages = _prompt_messages(_require(record, "messages"), "messages")
    extra = {k: v for k, v in record.items() if k not in ("id", "messages")}
    return PromptRecord(id=str(raw_id), messages=messages, extra=extra)


@dataclass(frozen=True)
class Candidate:
    text: str
    source: str
    seed: int | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    finish_reason: str | None = None  # stop, length (cut off at the token limit), ...; None for a prompt's field


@dataclass(frozen=True)
class CandidatesRecord:
    id: str
    messages: list[dict[str, str]]
    candidates: list[Candidate]

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "messages": self.messages,
            "candidates": [vars(candidate) for candidate in self.candidates],
        }


def parse_candidates(record: dict[str, Any], where: str) -> CandidatesRecord:
    prompt = parse_prompt(record, where)
    raw = _require(record, "candidates")
    if not isinstance(raw, list):
        raise RecordInvalid("wrong_type", "candidates must be a list")
    candidates = []
    for index, item in enumerate(raw):
        name = f"candidates[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise RecordInvalid("wrong_type", f"{name} must be an object with a string 'text'")
        source = item.get("source")
        if source != "policy" and not (isinstance(source, str) and source.startswith("offpolicy:")):
            raise RecordInvalid("wrong_type", f"{name}.source must be 'policy' or 'offpolicy:<name>', got {source!r}")
        seed = item.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RecordInvalid("wrong_type", f"{name}.seed must be an integer or null")
        finish_reason = item.get("finish_reason")
        if finish_reason is not None and not isinstance(finish_reason, str):
            raise RecordInvalid("wrong_type", f"{name}.finish_reason must be a string or null")
        try:
            score = _finite_or_none(item, "score")
            scores = item.get("scores")
            if scores is not None:
                if not isinstance(scores, dict):
                    raise RecordInvalid("wrong_type", "scores must be an object")
                scores = {str(k): _finite_or_none(scores, k) for k in scores}
        except RecordInvalid as exc:
            raise RecordInvalid(exc.reason, f"{name}.{exc.message}") from None
        candidates.append(
            Candidate(
                text=item["text"], source=source, seed=seed, score=score, scores=scores, finish_reason=finish_reason
            )
        )
    return CandidatesRecord(id=prompt.id, messages=prompt.messages, candidates=candidates)


@dataclass(frozen=True)
class ModelOutput:
    """One entry of alpaca_eval's `model_outputs.json`."""

    instruction: str
    output: str
    generator: str


def parse_model_output(record: dict[str, Any], where: str) -> ModelOutput:
    values = {}
    for key in ("instruction", "output", "generator"):
        value = _require(record, key)
        if not isinstance(value, str):
            raise RecordInvalid("wrong_type", f"{key} must be a string, got {type(value).__name__}")
        values[key] = value
    return ModelOutput(**values)


@dataclass(frozen=True)
class Annotation:
    """One entry of alpaca_eval's `annotations.json`: output_1 is the reference, output_2 the model's."""

    instruction: str
    output_1: str
    output_2: str
    generator_1: str
    generator_2: str
    preference: float


def parse_annotation(record: dict[str, Any], where: str) -> Annotation:
    values: dict[str, Any] = {}
    for key in ("instruction", "output_1", "output_2", "generator_1", "generator_2"):
        value = _require(record, key)
        if not isinstance(value, str):
            raise RecordInvalid("wrong_type", f"{key} must be a string, got {type(value).__name__}")
        values[key] = value
    preference = _finite_or_none(record, "preference")
    if preference is None:
        raise RecordInvalid("missing_field", "missing field 'preference'")
    if not 1.0 <= preference <= 2.0:
        raise RecordInvalid("out_of_range", f"preference must lie in [1, 2], got {preference}")
    return Annotation(preference=preference, **values)


@dataclass(frozen=True)
class ParsedRecord:
    where: str
    record: Any
    raw: dict[str, Any]


def parse_all(source: str, parse: Any, policy: BadRecordPolicy, unique_ids: bool = False) -> list[ParsedRecord]:
    """Read a source and parse every record with `parse(raw, where)`, applying the bad-record policy.

    With `unique_ids`, a record whose `.id` was already seen is a bad record naming where the first one was.
    """
    parsed: list[ParsedRecord] = []
    first_seen: dict[str, str] = {}
    for item in read_records(source, policy):
        try:
            record = parse(item.data, item.where)
        except RecordLeftOut as exc:
            policy.skip(item.where, exc.reason, exc.message)
            continue
        except RecordInvalid as exc:
            policy.reject(item.where, exc.reason, exc.message)
            continue
        if unique_ids:
            if record.id in first_seen:
                policy.reject(
                    item.where, "duplicate_id", f"duplicate id {record.id!r} (first at {first_seen[record.id]})"
                )
                continue
            first_seen[record.id] = item.where
        parsed.append(ParsedRecord(item.where, record, item.data))
    return parsed


def load_records(source: str, parse: Any, policy: BadRecordPolicy) -> list[Any]:
    """The parsed records of a source (see `parse_all`)."""
    return [item.record for item in parse_all(source, parse, policy)]
