"""llama.cpp on any CPU: the extra-buffers choice with the build's reported features substituted (no AMX machine
needed), the probe and its cache, and native crashes that end a command with a line instead of silence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import tiny_model

from wpo import llamacpp
from wpo.errors import ConfigError
from wpo.llamacpp import EXTRA_BUFFERS_ENV, build_features, choose_extra_buffers, run_probe

# What `llama_print_system_info()` prints, as read on an AMX Xeon and on an AVX2-only EPYC.
AMX_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
AVX2_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | OPENMP = 1 | REPACK = 1 | "
)


def never_probed() -> str | None:
    raise AssertionError("the probe ran where the build's features decide")


@pytest.fixture
def fresh_choice(monkeypatch, tmp_path):
    """A process-wide choice made afresh for the test (and forgotten after), with a cache of its own."""
    monkeypatch.setenv("WPO_CACHE_DIR", str(tmp_path / "cache"))
    llamacpp.extra_buffers.cache_clear()
    yield
    llamacpp.extra_buffers.cache_clear()


def test_build_features_are_read_from_the_system_info():
    features = build_features(AMX_BUILD)
    assert features["AMX_INT8"] == "1" and features["SSE3"] == "1" and features["REPACK"] == "1"
    assert "AMX_INT8" not in build_features(AVX2_BUILD)


def test_a_build_without_amx_keeps_extra_buffers_without_probing():
    choice = choose_extra_buffers("auto", AVX2_BUILD, never_probed)
    assert choice.enabled and choice.reason == "this llama.cpp build has no AMX kernels"


def test_an_amx_build_whose_kernels_crash_loads_without_extra_buffers():
    choice = choose_extra_buffers("auto", AMX_BUILD, lambda: "SIGILL (illegal instruction)")
    assert not choice.enabled
    assert "AMX kernels fail on this CPU (SIGILL (illegal instruction) in a probe" in choice.reason
    assert f"{EXTRA_BUFFERS_ENV}=on forces them" in choice.reason
    assert choice.describe().startswith("llama.cpp extra buffer types off (no AMX, no weight repacking): ")


def test_an_amx_build_whose_kernels_run_keeps_them():
    choice = choose_extra_buffers("auto", AMX_BUILD, lambda: None)
    assert choice.enabled and "ran a probe batch on this CPU" in choice.reason


@pytest.mark.parametrize("setting", ["on", "off"])
@pytest.mark.parametrize("build", [AMX_BUILD, AVX2_BUILD])
def test_the_environment_forces_either_way(setting, build):
    choice = choose_extra_buffers(setting, build, never_probed)
    assert choice.enabled == (setting == "on") and choice.reason == f"{EXTRA_BUFFERS_ENV}={setting}"


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "maybe")
    with pytest.raises(ConfigError, match=rf"^{EXTRA_BUFFERS_ENV} must be one of auto, on, off \(got 'maybe'\)$"):
        llamacpp.extra_buffers_setting()
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, " OFF ")
    assert llamacpp.extra_buffers_setting() == "off"


def python_child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_probe_names_what_ended_its_child():
    assert run_probe(python_child("pass")) is None
    assert run_probe(python_child("import os, signal; os.kill(os.getpid(), signal.SIGILL)")) == (
        "SIGILL (illegal instruction)"
    )
    assert run_probe(python_child("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")) == (
        "SIGSEGV (segmentation fault)"
    )
    assert run_probe(python_child("raise SystemExit(3)")) == "exit status 3"


def test_the_probe_runs_once_per_build_and_cpu(monkeypatch, tmp_path, fresh_choice):
    runs = []
    monkeypatch.setattr(llamacpp, "run_probe", lambda: runs.append(1) or "SIGILL (illegal instruction)")
    assert llamacpp.cached_probe() == "SIGILL (illegal instruction)"
    assert llamacpp.cached_probe() == "SIGILL (illegal instruction)" and len(runs) == 1
    (verdict,) = (tmp_path / "cache" / "llamacpp-probe").iterdir()
    assert verdict.name == f"{llamacpp.probe_key()}.json"
    assert json.loads(verdict.read_text()) == {"failure": "SIGILL (illegal instruction)"}


def test_the_choice_is_made_once_per_process_and_logged(monkeypatch, caplog, fresh_choice):
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "off")
    with caplog.at_level("INFO", logger="wpo.llamacpp"):
        assert not llamacpp.extra_buffers().enabled
        monkeypatch.setenv(EXTRA_BUFFERS_ENV, "on")
        assert not llamacpp.extra_buffers().enabled  # decided once: every load in the process agrees
    assert caplog.messages == [
        f"llama.cpp extra buffer types off (no AMX, no weight repacking): {EXTRA_BUFFERS_ENV}=off"
    ]
    assert llamacpp.model_params().use_extra_bufts is False and llamacpp.model_params(extra=True).use_extra_bufts


CRASH_IN_BLOCK = """
import os, signal
from wpo.crashes import crash_reported
with crash_reported("llama.cpp sampling from policy.F16.gguf", "rerun with X=off"):
    {body}
"""


@pytest.mark.parametrize("fault", ["SIGILL", "SIGSEGV"])
def test_a_native_crash_in_process_ends_with_two_lines(fault):
    crashed = subprocess.run(
        python_child(CRASH_IN_BLOCK.format(body=f"os.kill(os.getpid(), signal.{fault})")),
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "WPO_DEBUG"},
    )
    assert crashed.returncode == -getattr(signal, fault)
    what = {"SIGILL": "Illegal instruction", "SIGSEGV": "Segmentation fault"}[fault]
    assert crashed.stderr.splitlines() == [
        f"wpo: fatal error: {what} inside llama.cpp sampling from policy.F16.gguf",
        "wpo: rerun with X=off (WPO_DEBUG=1 shows the trace)",
    ]


def test_wpo_debug_adds_the_trace_and_a_clean_block_says_nothing():
    crashed = subprocess.run(
        python_child(CRASH_IN_BLOCK.format(body="os.kill(os.getpid(), signal.SIGILL)")),
        capture_output=True,
        text=True,
        env={**os.environ, "WPO_DEBUG": "1"},
    )
    lines = crashed.stderr.splitlines()
    assert lines[:2] == [
        "wpo: fatal error: Illegal instruction inside llama.cpp sampling from policy.F16.gguf",
        "wpo: rerun with X=off",
    ]
    assert "Fatal Python error: Illegal instruction" in crashed.stderr and 'File "<string>", line 5' in crashed.stderr
    clean = subprocess.run(python_child(CRASH_IN_BLOCK.format(body="pass")), capture_output=True, text=True)
    assert clean.returncode == 0 and clean.stderr == ""


@pytest.mark.slow  # llama.cpp on the real SmolLM2
def test_the_embedded_gguf_decodes_a_batch_as_chosen(fresh_choice):
    """The crash this guards against: on an AMX build of llama.cpp, a quantized batch of 2+ rows died (SIGILL or
    SIGSEGV) with extra buffer types on. Whatever this CPU is, the chosen way decodes a batch."""
    from wpo.models import embedded_gguf

    llm = llamacpp.open_llama(embedded_gguf("embedded:smollm2-135m-instruct"), n_ctx=128, verbose=False)
    assert llm.model_params.use_extra_bufts == llamacpp.extra_buffers().enabled
    llm.eval(list(range(100, 132)))
    assert llm.n_tokens == 32


@pytest.mark.slow  # converts and quantizes a tiny model
def test_a_verification_child_killed_by_a_signal_ends_export_with_one_line(tmp_path, monkeypatch, fresh_choice):
    from helpers import cli

    from wpo.exporting import verify
    from wpo.models import load_tokenizer, resolve_model_path

    model = tiny_model(
        tmp_path / "model", "llama", load_tokenizer(resolve_model_path("embedded:smollm2-135m-instruct"))
    )
    recipe = tmp_path / "export.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'run'}\n"
        f"export: {{model: {model}, name: tiny, quantizations: [F16, Q8_0], verify_tokens: 16}}\n"
    )
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "on")
    monkeypatch.setattr(
        verify, "VERIFY_COMMAND", python_child("import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    )
    crashed = cli("export", recipe)
    export_dir = tmp_path / "run" / "export"
    assert crashed.exit_code == 1 and "Traceback" not in crashed.stderr
    assert crashed.stderr.splitlines()[-1] == (  # after transformers' progress bar of loading the HF model
        f"wpo: error: llama.cpp crashed with SIGILL (illegal instruction) while verifying "
        f"{export_dir / 'tiny.F16.gguf'}; its AMX or repacked-weight kernels may not run on this CPU: rerun with "
        f"{EXTRA_BUFFERS_ENV}=off (docs/reliability.md); the GGUF files are kept, and the rerun resumes from them"
    )
    assert sorted(p.name for p in export_dir.iterdir()) == [".gguf-config", "tiny.F16.gguf", "tiny.Q8_0.gguf"]
    written = {p.name: p.stat().st_mtime_ns for p in export_dir.glob("*.gguf")}

    monkeypatch.undo()
    monkeypatch.setenv("WPO_CACHE_DIR", str(tmp_path / "cache"))
    llamacpp.extra_buffers.cache_clear()
    assert cli("export", recipe).exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in export_dir.glob("*.gguf")} == written  # resumed, not redone
    report = json.loads((export_dir / "quantization_report.json").read_text())
    assert [entry["type"] for entry in report["files"]] == ["F16", "Q8_0"]
    assert (export_dir / "README.md").is_file() and (export_dir / "manifest.json").is_file()
