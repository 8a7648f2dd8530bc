"""Pairwise judge throughput on this machine: the API judge (SmolLM2 on llama.cpp's server, loopback, a/b grammar)
and the reward-model judge (SmolLM2's body with a one-output head), on the same 24 comparisons.

Run: python benchmarks/judge_throughput.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

from wpo.config import load_recipe
from wpo.evaluation.judges import ApiPairwiseJudge, Comparison, RewardModelPairwiseJudge
from wpo.models import embedded_gguf, load_tokenizer, resolve_model_path


def main() -> None:
    items = [
        Comparison(
            [{"role": "user", "content": f"Explain idea number {i} in one paragraph."}],
            f"Idea {i} is simple: " + "it works. " * (5 + i % 7),
            f"Here is idea {i}: " + "fine. " * (3 + i),
        )
        for i in range(24)
    ]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wpo.llamacpp",  # llama_cpp.server, its models loaded as on every llama.cpp use in wpo (AMX CPUs too)
            "server",
            "--model",
            str(embedded_gguf("embedded:smollm2-135m-instruct")),
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/models", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        api = load_recipe(
            None, [f"eval.api={{base_url: '{url}', model: m, extra_body: {{grammar: 'root ::= \"a\" | \"b\"'}}}}"]
        )
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            ApiPairwiseJudge(api, Path(cache)).preferences(items)
            api_seconds = time.perf_counter() - started
    finally:
        server.terminate()
    with tempfile.TemporaryDirectory() as directory:
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(0)
        base = resolve_model_path("embedded:smollm2-135m-instruct")
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(directory)
        load_tokenizer(base).save_pretrained(directory)
        judge = RewardModelPairwiseJudge(
            load_recipe(None, ["eval.judge=reward_model", f"eval.reward_model={directory}"])
        )
        started = time.perf_counter()
        judge.preferences(items)
        rm_seconds = time.perf_counter() - started
    print(f"{len(items)} comparisons, 2-core CPU")
    print(f"{'judge':<40} {'seconds':>8} {'judgements/s':>13}")
    print(f"{'api: SmolLM2 Q4_1 on llama.cpp server':<40} {api_seconds:>8.2f} {len(items) / api_seconds:>13.2f}")
    print(f"{'reward_model: SmolLM2 body, fp32':<40} {rm_seconds:>8.2f} {len(items) / rm_seconds:>13.2f}")


if __name__ == "__main__":
    main()
