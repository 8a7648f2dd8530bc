"""Crash-safe progress for stages that work record by record (sample, score).

Finished records are appended to a progress file as they complete — each append flushed and fsynced — so a killed
run loses at most the unit of work in flight. The file's name carries the stage's config hash: a rerun under the
same config resumes from it, a rerun under another config starts clean. A line torn by a kill is cut off on load.
When the stage finishes, it writes its real output atomically (in input order) and removes the progress file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from wpo.data.io import writing

log = logging.getLogger(__name__)


class ProgressFile:
    """This process's progress file; with several processes (`process_index` > 0 or `num_processes` > 1) each appends
    to its own, and `load` reads every process's file of the same config — so a rerun resumes whatever the number
    of processes was."""

    def __init__(self, directory: Path, name: str, config_hash: str, process_index: int = 0, num_processes: int = 1):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.name, self.config_hash = directory, name, config_hash
        suffix = f".process{process_index}" if num_processes > 1 else ""
        self.path = directory / f".{name}.{config_hash}{suffix}.progress.jsonl"
        for stale in directory.glob(f".{name}.*.progress.jsonl"):
            if not stale.name.startswith(f".{name}.{config_hash}."):
                log.info("removing progress of another config: %s", stale)
                stale.unlink(missing_ok=True)  # another process may have removed it first

    def files(self) -> list[Path]:
        """Every process's progress file under this config."""
        return sorted(self.directory.glob(f".{self.name}.{self.config_hash}.*progress.jsonl"))

    def load(self) -> dict[str, dict[str, Any]]:
        """Records finished by earlier runs (by any process), by id; a torn last line (a kill mid-write) is cut off."""
        done = {}
        for path in self.files():
            raw = path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            if len(complete) != len(raw):
                with path.open("r+b") as handle:
                    handle.truncate(len(complete))
            for line in complete.decode("utf-8").splitlines():
                record = json.loads(line)
                done[record["id"]] = record
        return done

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        payload = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
        with writing(self.path), self.path.open("a", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        """Every process's file: called by the one process that wrote the stage's output."""
        for path in self.files():
            path.unlink(missing_ok=True)
