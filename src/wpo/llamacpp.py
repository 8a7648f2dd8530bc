"""llama.cpp as wpo loads it on this CPU: with or without its extra buffer types, decided once per build and CPU.

When llama.cpp's CPU backend loads a quantized model it moves the weights into "extra buffer types": AMX tiles where
the build has AMX kernels (Intel Xeons from Sapphire Rapids on), repacked interleaved blocks elsewhere (faster
quantized matmuls on AVX2/AVX512). The llama-cpp-python 0.3.36 that wpo pins, built from source on an AMX CPU, dies
inside those AMX kernels on any quantized matmul of two or more rows: SIGILL on one Xeon, SIGSEGV on another
(llama.cpp pull request 26954). Loading with `use_extra_bufts = False` keeps every weight in plain CPU buffers: no
AMX, no repacking, no crash. F16 weights take neither path, so F16 files run the same either way.

`WPO_LLAMACPP_EXTRA_BUFFERS` chooses:
- `auto` (the default): on for a build that reports no AMX (repacking is safe there, and faster:
  `benchmarks/llamacpp_extra_buffers.py`). For a build that reports AMX, a child process loads the embedded SmolLM2
  GGUF (Q4_1, a type the AMX kernels take) with them and decodes 8 tokens at once: on if the child lives, off if a
  signal killed it. The verdict is cached per llama.cpp library, CPU and kernel, so the probe (about a second) runs
  once per machine and build, and a fixed llama.cpp gets its AMX kernels back by itself.
- `on` / `off`: forced, whatever the build reports.
Every llama.cpp load in wpo (sampling, export verification, `wpo chat`, the test suite's server) asks `extra_buffers`,
which logs its choice and the reason once per process.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wpo.crashes import signal_name
from wpo.errors import ConfigError

log = logging.getLogger(__name__)

EXTRA_BUFFERS_ENV = "WPO_LLAMACPP_EXTRA_BUFFERS"
SETTINGS = ("auto", "on", "off")
PROBE_TOKENS = 8  # a batch of several rows: one row takes llama.cpp's vector kernel, not the AMX one
PROBE_TIMEOUT_S = 300


@dataclass(frozen=True)
class ExtraBuffers:
    enabled: bool
    reason: str

    def describe(self) -> str:
        state = "on" if self.enabled else "off (no AMX, no weight repacking)"
        return f"llama.cpp extra buffer types {state}: {self.reason}"


def extra_buffers_setting() -> str:
    value = os.environ.get(EXTRA_BUFFERS_ENV, "auto").strip().lower() or "auto"
    if value not in SETTINGS:
        raise ConfigError(f"{EXTRA_BUFFERS_ENV} must be one of {', '.join(SETTINGS)} (got {value!r})")
    return value


def build_features(system_info: str) -> dict[str, str]:
    """`llama_print_system_info()`'s `CPU : SSE3 = 1 | AMX_INT8 = 1 | ...` as a mapping."""
    features = {}
    for part in system_info.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        if sep:
            features[name.split(":")[-1].strip()] = value.strip()
    return features


def choose_extra_buffers(setting: str, system_info: str, probe: Callable[[], str | None]) -> ExtraBuffers:
    """The decision, apart from where its inputs come from: `probe()` returns None when the build's AMX kernels ran a
    batch on this CPU, or what killed them; it is called only for a build that reports AMX under `auto`."""
    if setting != "auto":
        return ExtraBuffers(setting == "on", f"{EXTRA_BUFFERS_ENV}={setting}")
    if build_features(system_info).get("AMX_INT8") != "1":
        return ExtraBuffers(True, "this llama.cpp build has no AMX kernels")
    failure = probe()
    if failure is None:
        return ExtraBuffers(True, "this llama.cpp build's AMX kernels ran a probe batch on this CPU")
    return ExtraBuffers(
        False,
        f"this llama.cpp build's AMX kernels fail on this CPU ({failure} in a probe; llama.cpp pull request 26954); "
        f"{EXTRA_BUFFERS_ENV}=on forces them",
    )


@functools.cache
def extra_buffers() -> ExtraBuffers:
    """This process's choice, logged once."""
    import llama_cpp

    choice = choose_extra_buffers(extra_buffers_setting(), llama_cpp.llama_print_system_info().decode(), cached_probe)
    log.info("%s", choice.describe())
    return choice


def probe_key() -> str:
    """What the AMX kernels' fate depends on: the llama.cpp CPU library, the CPU's flags and the kernel."""
    import llama_cpp

    library = Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"
    digest = hashlib.sha256(library.read_bytes() if library.is_file() else llama_cpp.__version__.encode())
    digest.update(_cpu_flags().encode())
    digest.update(platform.release().encode())
    return digest.hexdigest()[:20]


def _cpu_flags() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return line
    return platform.processor()


def cached_probe() -> str | None:
    from wpo.data.io import write_json
    from wpo.layout import cache_root

    verdict_file = cache_root() / "llamacpp-probe" / f"{probe_key()}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads(verdict_file.read_text(encoding="utf-8"))["failure"]
    log.info("llama.cpp reports AMX kernels: probing them once in a child process (cached in %s)", verdict_file)
    failure = run_probe()
    with contextlib.suppress(OSError):
        write_json(verdict_file, {"failure": failure})
    return failure


def run_probe(command: list[str] | None = None) -> str | None:
    """None if the probe child decoded its batch, else what ended it (a signal, an exit status, a timeout)."""
    if command is None:
        from wpo.config import EMBEDDED_DEFAULT_MODEL
        from wpo.models import embedded_gguf

        command = [sys.executable, "-m", "wpo.llamacpp", "probe", str(embedded_gguf(EMBEDDED_DEFAULT_MODEL))]
    try:
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"no answer in {PROBE_TIMEOUT_S} s"
    if result.returncode == 0:
        return None
    return signal_name(result.returncode) or f"exit status {result.returncode}"


def crash_fix() -> str:
    """What to do about a native crash inside llama.cpp, given this process's choice."""
    if extra_buffers().enabled:
        return (
            f"its AMX or repacked-weight kernels may not run on this CPU: rerun with {EXTRA_BUFFERS_ENV}=off "
            "(docs/reliability.md)"
        )
    return "a fault inside llama.cpp itself: rerun with WPO_DEBUG=1 and report its trace with the GGUF file"


@contextlib.contextmanager
def crash_reported_llama(what: str) -> Iterator[None]:
    """`crash_reported` for llama.cpp running in this process."""
    from wpo.crashes import crash_reported

    with crash_reported(f"llama.cpp {what}", crash_fix()):
        yield


def model_params(extra: bool | None = None):
    """llama.cpp's default model parameters on the CPU, with this process's extra-buffers choice."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = extra_buffers().enabled if extra is None else extra
    return params


@contextlib.contextmanager
def _default_model_params() -> Iterator[None]:
    """`llama_cpp.Llama` builds its model parameters from `llama_model_default_params()` and exposes no
    `use_extra_bufts`: while a Llama loads, that function returns ours."""
    import llama_cpp.llama_cpp as bindings

    original = bindings.llama_model_default_params
    bindings.llama_model_default_params = model_params
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


def open_llama(path: Path, **kwargs):
    """`llama_cpp.Llama` on `path`, its weights placed as `extra_buffers` chose."""
    from llama_cpp import Llama

    with _default_model_params():
        return Llama(model_path=str(path), **kwargs)


def _probe(gguf: str) -> None:
    """The probe child: the AMX kernels take a quantized batch of several rows, with them on."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(gguf.encode(), model_params(extra=True))
    if not model:
        sys.exit(f"cannot load {gguf}")
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = 64
    params.n_threads = params.n_threads_batch = os.cpu_count() or 1
    context = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(PROBE_TOKENS, 0, 1)
    for index in range(PROBE_TOKENS):
        batch.token[index], batch.pos[index], batch.n_seq_id[index] = 1 + index, index, 1
        batch.seq_id[index][0], batch.logits[index] = 0, index == PROBE_TOKENS - 1
    batch.n_tokens = PROBE_TOKENS
    status = llama_cpp.llama_decode(context, batch)
    sys.exit(0 if status == 0 else f"llama_decode returned {status}")


def _serve(arguments: list[str]) -> None:
    """`python -m llama_cpp.server ARGS` with every model loaded as `extra_buffers` chose: a loopback OpenAI-compatible
    server that runs on AMX CPUs too."""
    import runpy

    import llama_cpp.llama_cpp as bindings

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    bindings.llama_model_default_params = model_params
    sys.argv = ["llama_cpp.server", *arguments]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"] and len(sys.argv) == 3:
        _probe(sys.argv[2])
    elif sys.argv[1:2] == ["server"]:
        _serve(sys.argv[2:])
    else:
        sys.exit("usage: python -m wpo.llamacpp probe GGUF | server [llama_cpp.server arguments]")
