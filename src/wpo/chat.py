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
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
        self.max_new_tokens = max_new_tokens

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        for chunk in self.llm.create_chat_completion(messages=messages, max_tokens=self.max_new_tokens,
                                                     temperature=0.7, stream=True):  # fmt: skip
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

        inputs = apply_chat_template(self.tokenizer, messages, add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)  # fmt: skip
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**inputs, streamer=streamer, max_new_tokens=self.max_new_tokens, do_sample=True, temperature=0.7)
        thread = threading.Thread(target=self.model.generate, kwargs=kwargs)
        thread.start()
        yield from streamer
        thread.join()


def open_chat(model: str, max_new_tokens: int):
    if model.endswith(".gguf"):
        if not Path(model).is_file():
            raise WpoError(f"GGUF file {model} does not exist")
        return GgufChat(Path(model), max_new_tokens)
    return HfChat(model, max_new_tokens)


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
