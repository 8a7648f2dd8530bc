"""Checkpoints without pickle: weights and optimizer tensors in safetensors, everything else in JSON.

A checkpoint directory is written under a temporary name and renamed into place, and `trainer_state.json` (with the
config hash the run was started with) is the last file written, so a directory named `checkpoint-N` is complete.
The weights and the optimizer state are whole, keyed by parameter name — gathered by every process first when a
launch shards them (FSDP, DeepSpeed ZeRO-3) — so a checkpoint resumes under any number of processes.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from wpo.data.io import write_json
from wpo.errors import WpoError
from wpo.manifest import changed_keys

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "weights.json"  # the WPO weights so far, pair by pair (`WeightLedger.state`)


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`{"state": {parameter name: {key: value}}, "param_groups": [...]}` → tensors named `parameter.key`, and JSON.
    A nested state (bitsandbytes keeps its 8-bit codes and scales under one key) is named `parameter.key/inner`."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    storages: set[int] = set()  # safetensors refuses tensors that share memory (bitsandbytes shares its code maps)

    def flatten(name: str, prefix: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensor = value.detach().cpu().contiguous()
                if tensor.untyped_storage().data_ptr() in storages:
                    tensor = tensor.clone()
                storages.add(tensor.untyped_storage().data_ptr())
                tensors[f"{name}.{prefix}{key}"] = tensor
            elif isinstance(value, dict):
                flatten(name, f"{prefix}{key}/", value)
            else:
                scalars.setdefault(name, {})[f"{prefix}{key}"] = value

    for name, param_state in state_dict["state"].items():
        flatten(name, "", param_state)
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}

    def put(name: str, path: str, value: Any) -> None:
        *outer, key = path.split("/")
        target = state.setdefault(name, {})
        for part in outer:
            target = target.setdefault(part, {})
        target[key] = value

    for tensor_name, tensor in tensors.items():
        name, path = tensor_name.rsplit(".", 1)  # parameter names have dots; optimizer state keys do not
        put(name, path, tensor)
    for name, values in meta["scalars"].items():
        for path, value in values.items():
            put(name, path, value)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    return tensors


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int
    state: dict[str, Any]


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    model,
    model_state: dict[str, torch.Tensor],
    tokenizer,
    optimizer_state: dict[str, Any],
    scheduler,
    config_hash: str,
    config: dict[str, Any],
    schedule: dict[str, int],
    weight_ledger: dict[str, Any],
) -> Path:
    """`model` (unwrapped) saves `model_state`, its whole state dict; `optimizer_state` is keyed by parameter name;
    `weight_ledger` is the run's WPO weights so far, as JSON."""
    final = directory / f"checkpoint-{step}"
    staging = directory / f".checkpoint-{step}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "model").mkdir(parents=True)
    model.save_pretrained(staging / "model", state_dict=model_state, safe_serialization=True)
    tokenizer.save_pretrained(staging / "model")
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer_state)
    save_file(optimizer_tensors, str(staging / "optimizer.safetensors"))
    save_file(_rng_tensors(), str(staging / "rng.safetensors"))
    write_json(staging / WEIGHTS_FILE, weight_ledger)
    write_json(
        staging / STATE_FILE,
        {
            "step": step,
            "config_hash": config_hash,
            "config": config,
            "schedule": schedule,
            "optimizer": optimizer_meta,
            "scheduler": scheduler.state_dict(),
            "python_random": _python_random_state(),
        },
    )
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final


def _python_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def find_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def prune_checkpoints(directory: Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in find_checkpoints(directory)[:-keep] if keep > 0 else find_checkpoints(directory):
        shutil.rmtree(path, ignore_errors=True)


def stale_checkpoints(directory: Path, config_hash: str, config: dict[str, Any]) -> tuple[str, list[str]] | None:
    """When the newest checkpoint was written by another config (its pairs changed upstream, a setting changed):
    that config's hash and the keys that differ; None when there is none or it is this config's."""
    checkpoints = find_checkpoints(directory)
    if not checkpoints:
        return None
    state = json.loads((checkpoints[-1][1] / STATE_FILE).read_text(encoding="utf-8"))
    if state.get("config_hash") == config_hash:
        return None
    return str(state.get("config_hash")), changed_keys(state.get("config", {}), config)


def latest_resume_point(directory: Path, config_hash: str, schedule: dict[str, int]) -> ResumePoint | None:
    """The newest checkpoint of this config (`stale_checkpoints` moves another config's aside first), refusing one
    whose schedule (pairs per optimizer step, total steps) this launch would not reproduce exactly, as another
    process count would."""
    checkpoints = [
        (step, path)
        for step, path in find_checkpoints(directory)
        if json.loads((path / STATE_FILE).read_text(encoding="utf-8")).get("config_hash") == config_hash
    ]
    if not checkpoints:
        return None
    step, path = checkpoints[-1]
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    written = state.get("schedule") or {}
    if any(written.get(key) != schedule[key] for key in ("global_batch_pairs", "total_steps")):
        raise WpoError(
            f"{path} was written with {written.get('global_batch_pairs')} pairs per step and "
            f"{written.get('total_steps')} steps, but this launch makes {schedule['global_batch_pairs']} pairs per step "
            f"and {schedule['total_steps']} steps ({schedule['num_processes']} process(es)); refusing to resume: launch "
            "with per_device_batch_size x gradient_accumulation_steps x processes as before, or train.resume=never"
        )
    return ResumePoint(path=path, step=step, state=state)


def _state_dict_options(sharded: bool) -> StateDictOptions:
    """FSDP shards the Adam state with the parameters: gather it whole, on the CPU (and scatter it back on resume).
    One process and DDP hold it whole already."""
    return StateDictOptions(full_state_dict=sharded, cpu_offload=sharded)


def gather_optimizer_state(model, optimizer: torch.optim.Optimizer, sharded: bool) -> dict[str, Any]:
    """The whole optimizer state, keyed by parameter name; every process calls this when `sharded`."""
    return get_optimizer_state_dict(model, optimizer, options=_state_dict_options(sharded))


def read_optimizer_state(point: ResumePoint) -> dict[str, Any]:
    """The whole optimizer state saved at `point`, keyed by parameter name."""
    return _unflatten_optimizer(load_file(str(point.path / "optimizer.safetensors")), point.state["optimizer"])


def load_optimizer_state(model, optimizer: torch.optim.Optimizer, point: ResumePoint, sharded: bool) -> None:
    """Every process reads the whole state saved at `point` and keeps its own shard of it (all of it, unsharded)."""
    set_optimizer_state_dict(model, optimizer, read_optimizer_state(point), options=_state_dict_options(sharded))


def read_weight_ledger(point: ResumePoint) -> dict[str, Any] | None:
    """The WPO weights recorded up to `point`, for the ledger to go on from; None from a checkpoint written before
    they were kept (the per-pair table then starts at the resumed step)."""
    path = point.path / WEIGHTS_FILE
    if not path.is_file():
        log.warning(
            "%s has no %s: pair_weights.jsonl covers the steps after %d only", point.path, WEIGHTS_FILE, point.step
        )
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def restore_training_state(point: ResumePoint, scheduler) -> None:
    """The learning-rate schedule and the random number generators as they were at `point`."""
    scheduler.load_state_dict(point.state["scheduler"])
    rng = load_file(str(point.path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[key] for key in sorted(rng) if key.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = point.state["python_random"]
    random.setstate((version, tuple(internal), gauss))
    log.info("resumed from %s (step %d)", point.path, point.step)
