"""Security defaults: no remote code unless the recipe allows it, safetensors only, no pickle anywhere, API keys never
written, chat templates rendered in the sandbox, and output paths that stay inside the run directory.

(tests/test_models.py covers the loader-level refusals; these go through the CLI and the whole source tree.)
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import tokenize
from pathlib import Path

import pytest
from helpers import (
    CHATML_TEMPLATE,
    PLANTED_KEY,
    assert_one_line_error,
    build_tokenizer,
    cli,
    one_step_training,
    run_wpo,
    write_lines,
)
from judge_server import FakeJudge

from wpo.config import ModelConfig
from wpo.data import BadRecordPolicy, Pair
from wpo.errors import DataError, WpoError
from wpo.models import apply_chat_template, load_pretrained, load_tokenizer
from wpo.training.tokenize import tokenize_pairs

SOURCE = Path(__file__).parent.parent / "src" / "wpo"


@pytest.fixture
def remote_code_model(tmp_path, tiny_llama) -> tuple[Path, Path]:
    """tiny_llama, re-labelled as an unknown architecture whose config, model and tokenizer classes live in a module
    shipped with the weights; importing that module writes a marker file. Returns (model dir, marker path)."""
    model, marker = tmp_path / "remote-model", tmp_path / "REMOTE_CODE_RAN"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "wpo-remote"
    config["auto_map"] = {
        name: f"remote_module.{name}"
        for name in ("AutoConfig", "AutoModelForCausalLM", "AutoModelForSequenceClassification")
    }
    (model / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="RemoteTokenizer", auto_map={"AutoTokenizer": ["remote_module.Tok", None]})
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (model / "remote_module.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return model, marker


def test_remote_code_is_never_imported_without_the_recipes_consent(remote_code_model, tmp_path, pairs_file):
    from transformers import AutoModelForSequenceClassification

    model, marker = remote_code_model
    with pytest.raises(WpoError, match=r"needs custom code; set model.trust_remote_code: true if you trust it"):
        load_pretrained(str(model), ModelConfig())
    with pytest.raises(WpoError, match=r"needs its own code; set model.trust_remote_code: true"):
        load_pretrained(str(model), ModelConfig(), AutoModelForSequenceClassification, custom_code="its own code")
    with pytest.raises(WpoError, match=r"the tokenizer of .* needs custom code; set model.trust_remote_code: true"):
        load_tokenizer(str(model))
    assert_one_line_error(
        cli("train", one_step_training(tmp_path, model, pairs_file)),
        f"the tokenizer of {model} needs custom code; set model.trust_remote_code: true",
    )
    assert not marker.exists()


def from_pretrained_calls() -> list[tuple[str, str, set[str]]]:
    """(file, receiver, keyword names) of every `X.from_pretrained(...)` call in the package."""
    calls = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and called.attr == "from_pretrained":
                keywords = {k.arg for k in node.keywords if k.arg}
                calls.append((str(path.relative_to(SOURCE)), ast.unparse(called.value), keywords))
    return calls


# Loading a LoRA adapter onto a model already loaded under the recipe's settings: no model code, safetensors adapter.
ADAPTER_ONTO_LOADED_MODEL = {("training/trainer.py", "PeftModel")}


def test_every_from_pretrained_sets_trust_remote_code_and_safetensors():
    """transformers' default (`trust_remote_code=None`) asks on a terminal whether to run a model's code; every call
    here decides instead. Weights come from safetensors (or a GGUF file), never a pickle checkpoint."""
    calls = from_pretrained_calls()
    assert len(calls) >= 8
    for file, receiver, keywords in calls:
        if (file, receiver) in ADAPTER_ONTO_LOADED_MODEL:
            continue
        assert "trust_remote_code" in keywords, f"{file}: {receiver}.from_pretrained without trust_remote_code"
        if not receiver.endswith(("Tokenizer", "Config")):
            assert keywords & {"use_safetensors", "gguf_file"}, f"{file}: {receiver}.from_pretrained may load pickle"


def test_a_pickle_only_checkpoint_is_refused_on_the_command_line(tmp_path, pairs_file):
    model = tmp_path / "bin-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "pytorch_model.bin").write_bytes(b"never unpickled")
    assert_one_line_error(
        cli("train", one_step_training(tmp_path, model, pairs_file)),
        f"{model} holds only pickle weights (pytorch_model.bin); wpo loads safetensors only. "
        "Convert once with: python -c",
        f"save_pretrained('{model}-safetensors')",
    )


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unpickling_code(source: str) -> list[str]:
    """Code (not comments or strings) that unpickles: a pickle-family module, `torch.load`, `weights_only=False`,
    `allow_pickle=True`, `read_pickle`."""
    tokens = [
        t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type in (tokenize.NAME, tokenize.OP)
    ]
    found = []
    for i, token in enumerate(tokens):
        following = "".join(t.string for t in tokens[i : i + 3])
        if token.string in PICKLE_MODULES or token.string == "read_pickle":
            found.append(f"line {token.start[0]}: {token.string}")
        elif following in ("torch.load", "weights_only=False", "allow_pickle=True"):
            found.append(f"line {token.start[0]}: {following}")
    return found


def test_no_pickle_is_loaded_anywhere():
    assert len(unpickling_code("import pickle\nx = torch.load(f, weights_only=False)  # torch.load\n")) == 3
    assert unpickling_code('"""no pickle here: torch.load is named in a docstring"""\n# pickle\n') == []
    for path in sorted(SOURCE.rglob("*.py")):
        assert unpickling_code(path.read_text(encoding="utf-8")) == [], path


def test_the_api_key_is_used_but_written_nowhere(tmp_path, tiny_llama):
    """`wpo run` scores with a judge and evaluates with an API judge, the key in an environment variable, logging at
    DEBUG: the server sees the key on every request; no file of the run, and no line of output, contains it."""
    candidates = write_lines(
        tmp_path / "candidates.jsonl",
        [
            {
                "id": f"c{i}",
                "messages": [{"role": "user", "content": f"Say {word}."}],
                "candidates": [{"text": text, "source": "policy"} for text in (f"{word}!", f"No {word}.")],
            }
            for i, word in enumerate(("hello", "goodbye"))
        ],
    )
    prompts = write_lines(
        tmp_path / "eval.jsonl",
        [
            {"id": f"e{i}", "messages": [{"role": "user", "content": f"Name a {thing}."}], "reference": f"A {thing}."}
            for i, thing in enumerate(("colour", "city"))
        ],
    )
    with FakeJudge() as judge:
        endpoint = f"{{base_url: '{judge.url}', model: judge, api_key_env: WPO_TEST_JUDGE_KEY}}"
        recipe = tmp_path / "run.yaml"
        recipe.write_text(
            f"output_dir: {tmp_path / 'run'}\nstages: [score, eval]\n"
            f"score: {{candidates: {candidates}, scorer: judge, judge: {endpoint}}}\n"
            f"eval: {{model: {tiny_llama}, prompts: {prompts}, max_new_tokens: 4, api: {endpoint}}}\n"
        )
        env = {**os.environ, "WPO_TEST_JUDGE_KEY": PLANTED_KEY, "WPO_LOG_LEVEL": "DEBUG", "OMP_NUM_THREADS": "1"}
        result = run_wpo("run", recipe, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert len(judge.answered) == 4 + 2  # 4 candidates scored, 2 eval outputs judged
    assert judge.authorizations == [f"Bearer {PLANTED_KEY}"] * 6
    assert "DEBUG" in result.stderr  # the most verbose logging really was on
    assert PLANTED_KEY not in result.stdout + result.stderr
    files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert {"judge_cache.jsonl", "manifest.json", "annotations.json", "summary.json"} <= {p.name for p in files}
    for path in files:
        assert PLANTED_KEY.encode() not in path.read_bytes(), path


HOSTILE_TEMPLATES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
]


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_a_template_reaching_for_python_internals_is_refused(template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokenizer = build_tokenizer(template, [], None, "<pad>")
    with pytest.raises(
        WpoError,
        match=r"tried an unsafe operation \(access to attribute '__\w+__' of '\w+' object "
        r"is unsafe\.\); refusing to render it",
    ):
        apply_chat_template(tokenizer, [{"role": "user", "content": "hi"}], tokenize=False)
    assert not (tmp_path / "MARKER").exists()


def test_a_hostile_template_stops_training_with_one_line(tmp_path, tiny_llama, pairs_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "hostile-template"
    shutil.copytree(tiny_llama, model)
    (model / "chat_template.jinja").write_text(HOSTILE_TEMPLATES[1])
    assert_one_line_error(
        cli("train", one_step_training(tmp_path, model, pairs_file)),
        f"the chat template of {model} tried an unsafe operation (access to attribute '__init__' "
        "of 'type' object is unsafe.); refusing to render it",
    )
    assert not (tmp_path / "MARKER").exists()


def test_a_template_refusing_a_conversation_is_a_bad_record(tmp_path):
    """Gemma-style `raise_exception` for a system message: that record fails (file:line) or is counted, not the run."""
    template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + CHATML_TEMPLATE
    )
    tokenizer = build_tokenizer(template, ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>")
    system = Pair(
        "sys",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "Hello.",
        "Go.",
        where="pairs.jsonl:4",
    )
    plain = Pair("p1", [{"role": "user", "content": "What is seven plus five?"}], "Twelve.", "Eleven.")
    with pytest.raises(
        DataError,
        match=r"^pairs.jsonl:4 \(pair sys\): the chat template refused the conversation: "
        r"System role not supported$",
    ):
        tokenize_pairs([system, plain], tokenizer, max_length=64, max_prompt_length=32, policy=BadRecordPolicy())
    policy = BadRecordPolicy("skip")
    kept = tokenize_pairs([system, plain], tokenizer, max_length=64, max_prompt_length=32, policy=policy)
    assert [p.id for p in kept.pairs] == ["p1"] and policy.skipped == {"chat_template_error": 1}


@pytest.mark.parametrize("name", ["../../evil", "nested/name", "/tmp/evil", ".hidden"])
def test_an_export_name_cannot_leave_the_run_directory(tmp_path, tiny_llama, name):
    recipe = tmp_path / "export.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'runs' / 'run'}\nstages: [export]\n"
        f"export: {{model: {tiny_llama}, name: '{name}', quantizations: [F16]}}\n"
    )
    assert_one_line_error(cli("export", recipe), f"export.name {name!r} must be a plain file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.yaml"]  # nothing written, inside or out
