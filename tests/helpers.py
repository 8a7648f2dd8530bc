"""Plain helpers shared by the tests (fixtures live in conftest.py): tokenizers and tiny models built locally, pair and
prompt files, free ports, and the two ways of running the `wpo` command: in this process (`cli`) or as a real process,
optionally under torchrun (`run_wpo`).

Test modules import from here (`from helpers import ...`), never from conftest or from another test module.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typer.testing import Result

# Tests never reach a hub: fail fast instead of retrying a network that is not there. Set here, before the
# environments below copy os.environ (conftest.py imports this module before any test module is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Multi-process runs (torchrun, accelerate launch): one thread per process, and the INFO lines the tests read.
DISTRIBUTED_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WPO_LOG_LEVEL": "INFO"}

# what `train.compile` logs for a tiny llama's two layers
COMPILED_LOG_LINE = (
    "train.compile: 2 decoder layers (LlamaDecoderLayer) compiled by torch.compile (inductor): "
    "the first batches wait for the compile"
)

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

PAIRS = [
    ("p1", "What is seven plus five?", "Seven plus five is twelve.", "It is eleven."),
    ("p2", "Name the capital of France.", "The capital of France is Paris.", "Lyon, I think."),
    ("p3", "Write a line about the sea.", "The sea and the sky meet in the wind.", "No."),
    ("p4", "What is two times three?", "Two times three is six.", "Two times three is five, probably."),
    ("p5", "Describe a fox.", "A quick brown fox jumps over the lazy dog.", "A fox is a dog."),
    ("p6", "What is the capital of France?", "Paris.", "The capital of France is Rome."),
]

PLANTED_KEY = "sk-wpo-planted-test-key-0123456789"

# AdamW divides by √v, so in its first steps a rounding-level difference in a near-zero gradient becomes a
# learning-rate-sized difference in that weight: whether two equivalent computations (another layout, chunking,
# process count) train equal weights would depend on the CPU's kernels. With ε above every gradient of the tiny
# models (all under 0.1, measured) the update lr·m̂/(√v̂+ε) is smooth in the gradient (slope at most lr/ε), so the
# weights differ by rounding only; the learning rate keeps the moves as large as lr 1e-3 made them (up to ~5e-3).
SMOOTH_ADAM = ("train.adam_epsilon=0.1", "train.learning_rate=1e-2")


# --- files -----------------------------------------------------------------------------------------------------------

# A tiny training run: 2 steps of 2 pairs, short sequences, a learning rate that moves a tiny model.
TINY_TRAINING = {
    "max_steps": 2,
    "per_device_batch_size": 2,
    "max_length": 96,
    "max_prompt_length": 48,
    "learning_rate": 1.0e-3,
}


def train_recipe(
    path: Path,
    model: Path,
    pairs: Path | None = None,
    *,
    output_dir: Path | None = None,
    seed: int = 3,
    stages: tuple[str, ...] | None = ("train",),
    **train,
) -> Path:
    """The recipe file of a tiny training, written one way for every test: TINY_TRAINING's settings, overridden and
    extended by `train` (None writes null); `output_dir` and `stages` are left out when None."""
    import yaml

    recipe: dict = {"seed": seed}
    if output_dir is not None:
        recipe["output_dir"] = str(output_dir)
    if stages is not None:
        recipe["stages"] = list(stages)
    recipe["model"] = {"name_or_path": str(model)}
    recipe["train"] = {**({"pairs": str(pairs)} if pairs is not None else {}), **TINY_TRAINING, **train}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train_killed_at(monkeypatch, recipe, step: int) -> None:
    """`trainer.train(recipe)` interrupted (KeyboardInterrupt) as optimizer step `step` (0-based) begins."""
    import pytest

    from wpo.training import trainer

    real_step = trainer.train_step

    def dies(state, number):
        if number == step:
            raise KeyboardInterrupt
        return real_step(state, number)

    monkeypatch.setattr(trainer, "train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(recipe)
    monkeypatch.setattr(trainer, "train_step", real_step)


def recipe_for(tmp_path: Path, model: Path, pairs: Path, *overrides: str, run: str = "run"):
    """A loaded recipe of a tiny training in `tmp_path/run` (TINY_TRAINING's settings but its step count, which the
    tests give), for the trainer called in this process."""
    from wpo.config import load_recipe

    settings = [f"train.{key}={value}" for key, value in TINY_TRAINING.items() if key != "max_steps"]
    return load_recipe(
        None,
        [
            f"model.name_or_path={model}",
            f"train.pairs={pairs}",
            f"output_dir={tmp_path / run}",
            "seed=3",
            "train.logging_steps=1",
            *settings,
            *overrides,
        ],
    )


def one_step_training(tmp_path: Path, model: Path, pairs: Path, max_prompt_length: int | None = 32) -> Path:
    """The recipe file of a one-step training on short sequences, in `tmp_path/run`."""
    return train_recipe(
        tmp_path / "train.yaml",
        model,
        pairs,
        output_dir=tmp_path / "run",
        seed=1,
        max_steps=1,
        max_length=64,
        max_prompt_length=max_prompt_length,
    )


def user(text: str) -> list[dict[str, str]]:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


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


def prompts_file(tmp_path, count=5, reference=True):
    records = [
        {
            "id": f"q{i}",
            "messages": [{"role": "user", "content": f"What is {i} plus {i}?" + " Explain." * (i % 3)}],
            **({"reference": f"{i} plus {i} is {2 * i}."} if reference else {}),
        }
        for i in range(count)
    ]
    return write_lines(tmp_path / "prompts.jsonl", records)


def builtin(name: str) -> list[dict]:
    """The records of a data file shipped in the package (`builtin:NAME`)."""
    from wpo.data.io import resolve_builtin

    return [json.loads(line) for line in resolve_builtin(f"builtin:{name}").read_text().splitlines()]


def two_rounds_of_lora_and_eval(tmp_path: Path, model: Path) -> Path:
    """A `wpo run` recipe: two rounds of sample, score, pair and LoRA training on IFEval prompts, then eval."""
    train, heldout = builtin("ifeval-train.jsonl"), builtin("ifeval-heldout.jsonl")
    recipe = tmp_path / "run.yaml"
    recipe.write_text(
        f"seed: 5\nrounds: 2\nstages: [sample, score, pair, train, eval]\n"
        f"model: {{name_or_path: {model}, lora: {{r: 4, alpha: 8, dropout: 0.0}}}}\n"
        f"sample: {{prompts: {write_lines(tmp_path / 'train.jsonl', train[:6])}, n: 2, max_new_tokens: 6, "
        "temperature: 1.0, batch_size: 2, offpolicy_fields: [reference]}\n"
        "score: {scorer: python, function: 'wpo.tasks.ifeval:reward'}\n"
        "train: {learning_rate: 1.0e-2, max_steps: 2, max_length: 160, max_prompt_length: 128, logging_steps: 1}\n"
        f"eval: {{prompts: {write_lines(tmp_path / 'heldout.jsonl', heldout[:4])}, compare_to: base_model, "
        "reward: 'wpo.tasks.ifeval:reward', judge: python, function: 'wpo.tasks.ifeval:content_preference', "
        "max_new_tokens: 6, temperature: 1.0}\n"
    )
    return recipe


# --- tokenizers and tiny models --------------------------------------------------------------------------------------


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
    """A tiny random llama- or gemma2-style model with a byte-level BPE tokenizer (the conftest model fixtures)."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

    if kind == "llama":
        tokenizer = build_tokenizer(CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>")
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
    else:
        specials = ["<bos>", "<start_of_turn>", "<end_of_turn>"]
        tokenizer = build_tokenizer(GEMMA_TEMPLATE, specials, "<bos>", "<end_of_turn>")
        config = Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            final_logit_softcapping=2.0,
            attn_logit_softcapping=50.0,
            sliding_window=16,
            query_pre_attn_scalar=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if kind == "gemma2":
        with torch.no_grad():  # larger logits, so the soft-cap at 2.0 really bends them
            model.lm_head.weight.mul_(40.0)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_model(directory: Path, kind: str, tokenizer_source) -> Path:
    """A tiny random model of `kind` for export (llama.cpp's converter); `tokenizer_source` is a tokenizer or a
    directory holding `tokenizer.model`."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    spm_dir = tokenizer_source if isinstance(tokenizer_source, Path) else None
    tokenizer = AutoTokenizer.from_pretrained(spm_dir) if spm_dir else tokenizer_source
    shapes = dict(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    configs = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    config = Gemma2Config(head_dim=64, **shapes) if kind == "gemma2" else configs[kind](**shapes)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if spm_dir:
        shutil.copy(spm_dir / "tokenizer.model", directory)
    return directory


# --- the wpo command -------------------------------------------------------------------------------------------------


def assert_trained_alike(
    actual: dict, expected: dict, initial: dict | None, what: str = "weights", rel: float = 1e-4
) -> None:
    """Weights trained two equivalent ways (with SMOOTH_ADAM) agree to `rel` of how far training moved them from
    `initial` — a tolerance scaled by the update, not by one CPU's last bits. Without `initial` (a LoRA adapter,
    initialized at random) the scale is SMOOTH_ADAM's learning rate, about the most one step moves a weight."""
    from torch.testing import assert_close

    assert actual.keys() == expected.keys(), what
    if initial is None:
        moved = float(SMOOTH_ADAM[1].split("=")[1])
    else:
        moved = max((expected[name] - initial[name]).abs().max().item() for name in expected)
        assert moved > 1e-4, f"{what}: training barely moved the weights ({moved:.1e})"
    for name, tensor in expected.items():
        assert_close(actual[name], tensor, rtol=0.0, atol=rel * moved, msg=f"{what}: {name}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args: str | Path) -> Result:
    """`wpo ARGS` in this process (typer's runner: the same `app` and error guard as `python -m wpo`)."""
    from typer.testing import CliRunner

    from wpo.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])


def run_wpo(
    *args: str | Path, processes: int = 1, env: dict[str, str] | None = None, cwd=None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m wpo ARGS` in a real process, or for `processes` > 1 under torchrun (as `torchrun --nproc_per_node N
    -m wpo ARGS`); output captured as text. Checks nothing: see `assert_ok`."""
    launcher = [sys.executable, "-m"]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
        ]
    command = [*launcher, "wpo", *(str(arg) for arg in args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess | Result, tail: int = 4000) -> subprocess.CompletedProcess | Result:
    """Exit 0 (a process's return code or the in-process runner's exit code), else fail with stderr's end."""
    code = result.returncode if isinstance(result, subprocess.CompletedProcess) else result.exit_code
    assert code == 0, result.stderr[-tail:]
    return result


def machine_lacks(result: Result) -> list[str]:
    """What an in-process run said this machine lacks: it ended with exit 3 and every `wpo` line of stderr is
    `wpo: this machine lacks: ...` (a library's warning may stand beside them); those lines without the prefix."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 3, (result.exception, result.stderr)
    prefix = "wpo: this machine lacks: "
    lines = [line for line in result.stderr.splitlines() if line.startswith("wpo")]
    assert lines and all(line.startswith(prefix) for line in lines), result.stderr
    return [line.removeprefix(prefix) for line in lines]


def assert_one_line_error(result: Result, *fragments: str, exact: str | None = None) -> None:
    """An in-process run ended with exit 2 and stderr one line `wpo: error: ...`: no traceback, nothing escaped the
    CLI. The line contains every fragment, and with `exact` it is exactly `wpo: error: <exact>`."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, (result.exception, result.output)
    assert result.stderr.startswith("wpo: error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    if exact is not None:
        assert result.stderr == f"wpo: error: {exact}\n"
