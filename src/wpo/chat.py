"""`wpo chat MODEL`: talk to an HF model directory or a GGUF file in the terminal, tokens streamed as they come.

`/reset` starts a new conversation, `/exit` (or end of input) leaves; `--prompt TEXT` answers once and exits.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from wpo.errors import WpoError


class GgufChat:
    def __init__(self, path: Path, max_new_tokens: int):
        from wpo.llamacpp import open_llama

        self.path = path
        self.llm = open_llama(path, n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
        self.max_new_tokens = max_new_tokens

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        from wpo.llamacpp import crash_reported_llama

        with crash_reported_llama(f"chatting with {self.path}"):
            for chunk in self.llm.create_chat_completion(
                messages=messages, max_tokens=self.max_new_tokens, temperature=0.7, stream=True
            ):
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    yield text


class HfChat:
    def __init__(self, path: str, max_new_tokens: int):
        from wpo.config import ModelConfig
        from wpo.models import load_causal_lm, load_tokenizer, resolve_model_path

        resolved = resolve_model_path(path)
        self.tokenizer = load_tokenizer(resolved)
        self.model = load_causal_lm(resolved, ModelConfig(name_or_path=resolved)).eval()
        self.max_new_tokens = max_new_tokens

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        from wpo.models import apply_chat_template

        inputs = apply_chat_template(
            self.tokenizer, messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failures: list[Exception] = []

        def generate() -> None:  # in a thread, so tokens stream; a failure ends the stream instead of hanging it
            try:
                self.model.generate(
                    **inputs, streamer=streamer, max_new_tokens=self.max_new_tokens, do_sample=True, temperature=0.7
                )
            except Exception as exc:  # noqa: BLE001 - handed to the caller's thread below
                failures.append(exc)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if failures:
            raise WpoError(f"generation failed: {type(failures[0]).__name__}: {failures[0]}")


def open_chat(model: str, max_new_tokens: int):
    if max_new_tokens < 1:
        raise WpoError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise WpoError(f"GGUF file {model} does not exist")
        return GgufChat(path, max_new_tokens)
    if not model.startswith("embedded:") and not path.exists():  # chat takes local models only: never a hub look-up
        raise WpoError(
            f"no such file or directory: {model} (wpo chat takes an HF model directory, a .gguf file or embedded:NAME)"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise WpoError(_not_a_model(path))
    try:
        return HfChat(model, max_new_tokens)
    except (OSError, ValueError) as exc:  # transformers' way of saying "no model here"
        raise WpoError(f"cannot load a model from {model}: {str(exc).splitlines()[0]}") from None


def _not_a_model(path: Path) -> str:
    """What to chat with instead of a directory without a model: a run's trained model or its GGUF files."""
    ggufs = sorted(str(p) for p in (path / "export").glob("*.gguf"))
    final = path / "train" / "final"
    if (path / "manifest.json").is_file() or ggufs or final.is_dir() or (path / "summary.json").is_file():
        found = [str(final)] * final.is_dir() + ggufs
        options = ", ".join(found) if found else f"{final} or {path / 'export'}/*.gguf, once written"
        return f"{path} is a run directory, not a model: chat with {options}"
    return f"{path} is not an HF model directory (no config.json) nor a .gguf file"


def reply(chat, messages: list[dict[str, str]]) -> str:
    parts = []
    for text in chat.stream(messages):
        parts.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


def run_chat(model: str, prompt: str | None, max_new_tokens: int) -> None:
    chat = open_chat(model, max_new_tokens)
    if prompt is not None:
        reply(chat, [{"role": "user", "content": prompt}])
        return
    messages: list[dict[str, str]] = []
    print("wpo chat: /reset starts over, /exit leaves.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if line == "/exit":
            break
        if line == "/reset":
            messages = []
            print("(new conversation)")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        sys.stdout.write("model> ")
        messages.append({"role": "assistant", "content": reply(chat, messages)})
