"""Check every GGUF file: it loads in llama.cpp, answers a fixed prompt with its embedded chat template, and stays
close to the HF model: perplexity of both on a held-out text, and the mean KL(HF ‖ GGUF) of next-token distributions.

llama.cpp runs on each file in a child process (`python -m wpo.exporting.verify GGUF INPUTS RESULT`): a file that
kills it (a native crash, such as llama.cpp's AMX kernels on some Xeons) ends the stage with one line naming the
file, the signal and the fix, and the GGUF files already written are kept for the rerun.
"""

from __future__ import annotations

import faulthandler
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from wpo.crashes import debug_enabled, signal_name
from wpo.errors import NativeCrash, WpoError

VERIFY_PROMPT = "In one sentence, what is the water cycle?"
# The child that runs llama.cpp on one file; tests put a child that kills itself in its place.
VERIFY_COMMAND = [sys.executable, "-m", "wpo.exporting.verify"]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """The HF model's next-token logits (float32) at every position of `ids`."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def log_probs(logits: np.ndarray) -> np.ndarray:
    """Next-token log-probs in float64 for every position but the last (which predicts past the text)."""
    return _log_softmax(logits.astype(np.float64)[:-1])


def perplexity(log_probs: np.ndarray, ids: list[int]) -> float:
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))


def gguf_file_type(path: Path) -> int:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


def verify_gguf(path: Path, ids: list[int], reference_logits: np.ndarray) -> dict[str, Any]:
    """`verify_in_process` on `path` in a child process; a child killed by a signal raises `NativeCrash`."""
    from wpo.llamacpp import crash_fix

    with tempfile.TemporaryDirectory(prefix="wpo-verify-") as scratch:
        inputs, result = Path(scratch) / "inputs.npz", Path(scratch) / "result.json"
        np.savez(inputs, ids=np.asarray(ids, dtype=np.int64), logits=reference_logits)
        child = subprocess.run(
            [*VERIFY_COMMAND, str(path), str(inputs), str(result)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        if child.returncode == 0 and result.is_file():
            return json.loads(result.read_text(encoding="utf-8"))
    if debug_enabled():
        sys.stderr.write(child.stderr)
    killed_by = signal_name(child.returncode)
    if killed_by:
        raise NativeCrash(
            f"llama.cpp crashed with {killed_by} while verifying {path}; {crash_fix()}; the GGUF files are kept, and "
            "the rerun resumes from them"
        )
    last = [line for line in child.stderr.splitlines() if line.strip()][-1:] or [f"exit status {child.returncode}"]
    raise WpoError(f"llama.cpp could not verify {path}: {last[0]}")


def verify_in_process(path: Path, ids: list[int], reference_logits: np.ndarray) -> dict[str, Any]:
    from wpo.llamacpp import open_llama

    llm = open_llama(path, n_ctx=max(512, len(ids) + 64), logits_all=True, n_threads=os.cpu_count(), verbose=False)
    llm.reset()
    llm.eval(ids)
    gguf_log_probs = _log_softmax(np.asarray(llm.scores[: len(ids)], dtype=np.float64)[:-1])
    reference = log_probs(reference_logits)
    kl = (np.exp(reference) * (reference - gguf_log_probs)).sum(-1)
    llm.reset()
    answer = llm.create_chat_completion(
        messages=[{"role": "user", "content": VERIFY_PROMPT}], max_tokens=32, temperature=0.0
    )["choices"][0]["message"]["content"]
    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "file_type": gguf_file_type(path),
        "perplexity": perplexity(gguf_log_probs, ids),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "sample_prompt": VERIFY_PROMPT,
        "sample_answer": answer,
    }


def _main(gguf: str, inputs: str, result: str) -> None:
    faulthandler.enable()  # a crash leaves its trace on stderr, which the parent shows under WPO_DEBUG
    try:
        arrays = np.load(inputs)
        report = verify_in_process(Path(gguf), arrays["ids"].tolist(), arrays["logits"])
    except Exception as exc:  # noqa: BLE001 - one line for the parent, which raises it as the stage's error
        sys.exit(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    Path(result).write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    _main(*sys.argv[1:4])
