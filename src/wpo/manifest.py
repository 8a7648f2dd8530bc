"""Stage manifests: what a stage read, wrote and skipped, under which config, and whether it finished.

`wpo run` skips a stage whose manifest says it completed under the same config hash (which covers its inputs'
fingerprints), so rerunning a recipe costs nothing for stages already done.

Every stage counts under the same names (`Counts`: read, written, skipped by reason, then its own figures), written
by `Counts.to_json` and read by `Counts.from_json`, which also reads the manifests written before, where each stage
named its read and written counts its own way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from wpo.config import config_hash
from wpo.data.io import BUILTIN_PREFIX, resolve_builtin, write_json

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
TRACKED_PACKAGES = ("wpo", "torch", "transformers", "accelerate", "peft", "datasets", "safetensors")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprint(source: str) -> str:
    """What identifies a stage's input: a local file's sha256; for a directory (a model, a dataset: too big to hash
    on every check) its files' names, sizes and modification times, so retrained weights of equal size still differ;
    else the id itself."""
    if not source:
        return source
    local = resolve_builtin(source) if source.startswith(BUILTIN_PREFIX) else Path(source).expanduser()
    if not local.exists():  # a hub id, or an input not written yet
        return source
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        return config_hash([(str(p.relative_to(local)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return file_sha256(local)


def fingerprinted(config: dict[str, Any]) -> list[str]:
    """What a stage's config fingerprinted (`wpo.stage_run`): each input by its recipe key and source, each file of
    the user's code by its path."""
    inputs = (config.get("inputs") or {}).items()
    return [f"{key}: {entry['source']}" for key, entry in inputs if entry.get("source")] + [
        f"code: {path}" for path in config.get("code") or {}
    ]


# How each stage named its read and written counts before `Counts` (manifests of older runs).
OLD_READ_WRITTEN_KEYS = {
    "sample": ("prompts_read", "prompts_written"),
    "score": ("records_read", "records_written"),
    "pair": ("prompts", "pairs"),
    "train": ("pairs_read", "pairs_trained"),
    "eval": ("prompts", None),
    "export": (None, "files"),
}
OLD_REASON_KEYS = ("skipped", "dropped")


@dataclass(frozen=True)
class Counts:
    """What a stage read, wrote and left out, under the same names in every manifest, so the report and the CLI
    read any stage alike; the stage's own figures (samples per prompt, API usage, steps) ride along in `other`."""

    read: int | None  # input records, the skipped ones included; None where the stage reads no records (export)
    written: int | None  # output records (or files, for export)
    skipped: dict[str, int] = field(default_factory=dict)  # records read that gave no output, by reason
    other: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clashes = {"read", "written", "skipped"} & set(self.other)
        if clashes:
            raise ValueError(f"a stage's own counts cannot be named {sorted(clashes)}")

    def to_json(self) -> dict[str, Any]:
        return {"read": self.read, "written": self.written, "skipped": dict(self.skipped), **self.other}

    @classmethod
    def from_json(cls, counts: dict[str, Any] | None, stage: str) -> Counts:
        """A manifest's counts, as `to_json` writes them or as `stage` wrote them before (its own names for read and
        written, bad records under `skipped` and records that gave no output under `dropped`)."""
        counts = dict(counts or {})
        if "read" in counts and "written" in counts:
            return cls(counts.pop("read"), counts.pop("written"), counts.pop("skipped", None) or {}, counts)
        read_key, written_key = OLD_READ_WRITTEN_KEYS.get(stage, (None, None))
        read = counts.pop(read_key, None) if read_key else None
        written = counts.pop(written_key, None) if written_key else None
        skipped: dict[str, int] = {}
        for key in OLD_REASON_KEYS:
            by_reason = counts.pop(key, None)
            for reason, n in (by_reason if isinstance(by_reason, dict) else {}).items():
                skipped[reason] = skipped.get(reason, 0) + n
        return cls(read, written, skipped, counts)


def write_manifest(
    stage_dir: Path,
    *,
    stage: str,
    config: dict[str, Any],
    config_hash: str,
    seed: int,
    counts: Counts,
    wall_seconds: float,
    outputs: list[str],
    extra: dict[str, Any] | None = None,
    completed: bool = True,
) -> Path:
    """The stage's manifest."""
    path = stage_dir / MANIFEST_NAME
    write_json(
        path,
        {
            "stage": stage,
            "completed": completed,
            "config_hash": config_hash,
            "seed": seed,
            "config": config,
            "counts": counts.to_json(),
            "wall_seconds": round(wall_seconds, 3),
            "outputs": outputs,
            "fingerprinted": fingerprinted(config),
            "versions": package_versions(),
            **(extra or {}),
        },
    )
    return path


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs (what made a result stale)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = []
        for key in sorted(set(old) | set(new)):
            keys += changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return keys
    return [] if old == new else [prefix.rstrip(".")]


def completed_with(stage_dir: Path, config_hash: str) -> bool:
    """True when the stage finished under this exact config and all of its outputs are still there."""
    manifest = read_manifest(stage_dir)
    if not manifest or not manifest.get("completed") or manifest.get("config_hash") != config_hash:
        return False
    return all((stage_dir / output).exists() for output in manifest.get("outputs", []))


# Answers and log-probs a stage keeps for reuse: each is keyed by what it answers, so a redone stage keeps them.
REUSABLE = ("offpolicy_cache.jsonl", "policy_cache.jsonl", "judge_cache.jsonl", "reference_cache")


def move_aside(stage_dir: Path, old_hash: str, why: str) -> Path:
    """Move a stage's earlier result out of the way of a redo, to `<stage>.replaced-<hash>/` beside it (never
    deleted: the user decides), keeping copies of its reusable caches in place. Returns where it went."""
    target = stage_dir.with_name(f"{stage_dir.name}.replaced-{old_hash}")
    number = 2
    while target.exists():
        target = stage_dir.with_name(f"{stage_dir.name}.replaced-{old_hash}-{number}")
        number += 1
    stage_dir.rename(target)
    stage_dir.mkdir()
    for name in REUSABLE:
        kept = target / name
        if kept.is_dir():
            shutil.copytree(kept, stage_dir / name)
        elif kept.is_file():
            shutil.copy2(kept, stage_dir / name)
    log.warning("%s: %s; the earlier result is kept in %s", stage_dir, why, target)
    return target
