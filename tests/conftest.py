"""Fixtures: a byte-level BPE tokenizer with chat templates, tiny random llama- and gemma2-style models, pair files,
a SentencePiece tokenizer directory, a local llama.cpp server and a tiny reward model.

Everything is built locally (no hub access): the tokenizer is trained on a few sentences, the models are random.
Plain helpers and constants (and the offline settings for the hub) are in helpers.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from helpers import (
    CHATML_TEMPLATE,
    CORPUS,
    GEMMA_TEMPLATE,
    PAIRS,
    PLANTED_KEY,
    build_tokenizer,
    free_port,
    pair_record,
    save_tiny_model,
    write_lines,
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_reference(tmp_path_factory) -> Path:
    """A second tiny llama (other random weights, same tokenizer) to serve as an explicit reference model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-ref"), "llama", seed=1)


@pytest.fixture(scope="session")
def tiny_gemma2(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-gemma2"), "gemma2", seed=0)


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_lines(tmp_path / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])


@pytest.fixture(scope="session")
def llama_server():
    """`python -m wpo.llamacpp server` (llama_cpp.server) on the embedded SmolLM2 GGUF, on loopback, with an API key."""
    from wpo.models import embedded_gguf

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wpo.llamacpp",  # llama_cpp.server, its models loaded as on every llama.cpp use in wpo (AMX CPUs too)
            "server",
            "--model",
            str(embedded_gguf("embedded:smollm2-135m-instruct")),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--api_key",
            PLANTED_KEY,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if requests.get(f"{base_url}/models", headers={"Authorization": f"Bearer {PLANTED_KEY}"}, timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("llama_cpp.server did not start")
    yield base_url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny-rm")
    tokenizer = build_tokenizer(CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory) -> Path:
    """A SentencePiece tokenizer trained here (Gemma's kind): the converter reads `tokenizer.model` for Gemma-2 and
    Qwen2 without needing to recognize the tokenizer."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("spm")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=buffer,
        vocab_size=400,
        model_type="bpe",
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        byte_fallback=True,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(buffer.getvalue())
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GemmaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "chat_template": GEMMA_TEMPLATE,
            }
        )
    )
    assert len(AutoTokenizer.from_pretrained(directory)) > 300
    return directory
