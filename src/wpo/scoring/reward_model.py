"""A sequence-classification reward model on the rendered conversation, batched by length.

Any `AutoModelForSequenceClassification` with one output works; ArmoRM-style models whose output carries `.score`
(a custom gating head) work when the recipe sets `model.trust_remote_code: true` — without it loading fails with a
message saying so. Conversations longer than `score.max_length` tokens are truncated (from the left, keeping the
response) and counted.
"""

from __future__ import annotations

import logging

import torch

from wpo.config import ModelConfig
from wpo.distributed import process_device
from wpo.errors import WpoError
from wpo.models import apply_chat_template, load_pretrained, load_tokenizer, resolve_model_path
from wpo.scoring import ScoreRequest

log = logging.getLogger(__name__)


class RewardModelScorer:
    def __init__(self, reward_model: str, model: ModelConfig, batch_size: int, max_length: int):
        """`reward_model` (a directory or hub id) loaded with `model`'s dtype and remote-code permission; `batch_size`
        conversations per forward pass, each cut from the left to `max_length` tokens."""
        from transformers import AutoModelForSequenceClassification

        path = resolve_model_path(reward_model)
        self.batch_size, self.max_length = batch_size, max_length
        # first: it says why remote code is needed, if it is
        self.model = load_pretrained(
            path,
            model,
            AutoModelForSequenceClassification,
            custom_code="its own code (e.g. ArmoRM's gating head)",
        )
        self.tokenizer = load_tokenizer(path, model.trust_remote_code)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = process_device()
        self.model.to(self.device).eval()
        self.truncated = 0

    @torch.no_grad()
    def score(self, requests: list[ScoreRequest]) -> list[float]:
        texts = [
            apply_chat_template(
                self.tokenizer, r.messages + [{"role": "assistant", "content": r.response}], tokenize=False
            )
            for r in requests
        ]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        limit = self.max_length
        self.truncated += sum(len(ids) > limit for ids in encoded)
        encoded = [ids[-limit:] for ids in encoded]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # length buckets: little padding
        scores: list[float] = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt").to(self.device)
            output = self.model(**batch)
            values = output.score if hasattr(output, "score") else output.logits
            if values.ndim == 2:
                if values.shape[-1] != 1:
                    raise WpoError(f"reward model gives {values.shape[-1]} outputs per sequence; expected 1")
                values = values[:, 0]
            for row, value in zip(rows, values.float().tolist(), strict=True):
                scores[row] = value
        return scores
