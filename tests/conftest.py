"""Fixtures: a byte-level BPE tokenizer with chat templates, tiny random llama- and gemma2-style models, pair files.

Everything is built locally (no hub access): the tokenizer is trained on a few sentences, the models are random.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch

# Tests never reach a hub: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Seven plus five is twelve. Two times three is six.",
    "Write a short poem about the sea and the sky and the wind.",
    "The quick brown fox jumps over the lazy dog.",
]


def build_tokenizer(template: str, specials: list[str], bos: str | None, eos: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", *specials], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token=eos, bos_token=bos)
    fast.chat_template = template
    return fast


def save_tiny_model(directory: Path, kind: str, seed: int) -> Path:
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

    if kind == "llama":
        tokenizer = build_tokenizer(CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>")
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
        )  # fmt: skip
    else:
        specials = ["<bos>", "<start_of_turn>", "<end_of_turn>"]
        tokenizer = build_tokenizer(GEMMA_TEMPLATE, specials, "<bos>", "<end_of_turn>")
        config = Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
            final_logit_softcapping=2.0, attn_logit_softcapping=50.0, sliding_window=16, query_pre_attn_scalar=8,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if kind == "gemma2":
        with torch.no_grad():  # larger logits, so the soft-cap at 2.0 really bends them
            model.lm_head.weight.mul_(40.0)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


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


PAIRS = [
    ("p1", "What is seven plus five?", "Seven plus five is twelve.", "It is eleven."),
    ("p2", "Name the capital of France.", "The capital of France is Paris.", "Lyon, I think."),
    ("p3", "Write a line about the sea.", "The sea and the sky meet in the wind.", "No."),
    ("p4", "What is two times three?", "Two times three is six.", "Two times three is five, probably."),
    ("p5", "Describe a fox.", "A quick brown fox jumps over the lazy dog.", "A fox is a dog."),
    ("p6", "What is the capital of France?", "Paris.", "The capital of France is Rome."),
]


def pair_record(pair_id: str, prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "id": pair_id,
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "score_chosen": 1.0,
        "score_rejected": 0.0,
        "source_chosen": "policy",
        "source_rejected": "policy",
    }


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_lines(tmp_path / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])


PLANTED_KEY = "sk-wpo-planted-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server():
    """`python -m llama_cpp.server` on the embedded SmolLM2 GGUF, on loopback, requiring an API key."""
    from wpo.models import embedded_gguf

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf("embedded:smollm2-135m-instruct")),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--api_key", PLANTED_KEY],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
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
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
