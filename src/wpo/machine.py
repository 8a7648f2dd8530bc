"""What this machine lacks to run a recipe (a package, GPUs, a file), told apart from what the recipe gets wrong.

One function per requirement, each returning the `Lack` or None. `wpo.checks` asks them all and reports every lack
once the recipe is known to be right (exit 3; `wpo config` still prints the recipe); the code that cannot go on
without the thing asks the same function through `refuse`, so each rule lives here and nowhere else.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wpo.data.io import BUILTIN_PREFIX, looks_like_local_path
from wpo.errors import MachineLacks


@dataclass(frozen=True)
class Lack:
    what: str  # the package, the device or the file
    needed_by: str  # the recipe's setting that needs it, e.g. "sample.backend: vllm"
    fix: str


def refuse(lacks: Iterable[Lack | None]) -> None:
    """Raise `MachineLacks` with a line per missing thing (one thing needed by several settings names them all)."""
    needed_by: dict[tuple[str, str], list[str]] = {}
    for lack in filter(None, lacks):
        settings = needed_by.setdefault((lack.what, lack.fix), [])
        if lack.needed_by not in settings:
            settings.append(lack.needed_by)
    if needed_by:
        raise MachineLacks([f"{what} ({', '.join(settings)}): {fix}" for (what, fix), settings in needed_by.items()])


def _package(module: str, needed_by: str, fix: str, what: str | None = None) -> Lack | None:
    return Lack(what or module, needed_by, fix) if importlib.util.find_spec(module) is None else None


def vllm(needed_by: str) -> Lack | None:
    return _package("vllm", needed_by, "pip install vllm on a GPU machine (it pins its own torch)")


def llama_cpp(needed_by: str) -> Lack | None:
    return _package("llama_cpp", needed_by, "pip install llama-cpp-python", what="llama-cpp-python")


def bitsandbytes() -> Lack | None:
    return _package(
        "bitsandbytes", "train.optimizer: adamw_8bit", "pip install 'wpo[lowbit]', or set train.optimizer: adamw"
    )


def trackio() -> Lack | None:
    return _package("trackio", "train.report_to: trackio", "pip install 'wpo[trackio]', or leave trackio out")


def alpaca_eval() -> Lack | None:
    return _package("alpaca_eval", "eval.judge: alpaca_eval", "pip install 'wpo[alpaca-eval]'")


def deepspeed() -> Lack | None:
    return _package("deepspeed", "a DeepSpeed launch", "pip install 'wpo[deepspeed]'")


def gpus(count: int, needed_by: str) -> Lack | None:
    """`count` CUDA (or ROCm) GPUs, as torch sees them."""
    import torch

    found = torch.cuda.device_count()
    if found >= count:
        return None
    what = "a GPU" if count == 1 else f"{count} GPUs"
    return Lack(what, needed_by, f"torch sees {found} here: run it on a machine with {what}")


def generation_backend(backend: str, key: str, gpu_count: int = 1) -> list[Lack | None]:
    """What generating with `backend` (sample.backend, eval.backend) needs: llamacpp its package; vllm its package
    and its GPUs (`gpu_count`: sample.tensor_parallel_size)."""
    needed_by = f"{key}: {backend}"
    if backend == "llamacpp":
        return [llama_cpp(needed_by)]
    if backend == "vllm":
        return [vllm(needed_by), gpus(gpu_count, needed_by)]
    return []


def local_path(key: str, source: str | None) -> Lack | None:
    """A path `key` names that is not on this machine (the data may well be on the one that runs the recipe); hub
    ids and `builtin:` names are not this machine's to have."""
    if not source or source.startswith(BUILTIN_PREFIX) or not looks_like_local_path(source):
        return None
    if Path(source).expanduser().exists():
        return None
    return Lack(source, key, "no such file or directory here: copy it to this machine, or correct the path")
