"""Check every GGUF file: it loads in llama.cpp, answers a fixed prompt with its embedded chat template, and stays
close to the HF model: perplexity of both on a held-out text, and the mean KL(HF ‖ GGUF) of next-token distributions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

VERIFY_PROMPT = "In one sentence, what is the water cycle?"


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def hf_log_probs(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    return _log_softmax(logits[:-1])


def perplexity(log_probs: np.ndarray, ids: list[int]) -> float:
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))


def gguf_file_type(path: Path) -> int:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


def verify_gguf(path: Path, ids: list[int], reference_log_probs: np.ndarray) -> dict[str, Any]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path), n_ctx=max(512, len(ids) + 64), logits_all=True, n_threads=os.cpu_count(), verbose=False
    )
    llm.reset()
    llm.eval(ids)
    log_probs = _log_softmax(np.asarray(llm.scores[: len(ids)], dtype=np.float64)[:-1])
    kl = (np.exp(reference_log_probs) * (reference_log_probs - log_probs)).sum(-1)
    llm.reset()
    answer = llm.create_chat_completion(
        messages=[{"role": "user", "content": VERIFY_PROMPT}], max_tokens=32, temperature=0.0
    )["choices"][0]["message"]["content"]
    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "file_type": gguf_file_type(path),
        "perplexity": perplexity(log_probs, ids),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "sample_prompt": VERIFY_PROMPT,
        "sample_answer": answer,
    }
