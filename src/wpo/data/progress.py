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

log = logging.getLogger(__name__)


class ProgressFile:
    def __init__(self, directory: Path, name: str, config_hash: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f".{name}.{config_hash}.progress.jsonl"
        for stale in directory.glob(f".{name}.*.progress.jsonl"):
            if stale != self.path:
                log.info("removing progress of another config: %s", stale)
                stale.unlink()

    def load(self) -> dict[str, dict[str, Any]]:
        """Records finished by earlier runs, by id; a torn last line (a kill mid-write) is truncated away."""
        if not self.path.is_file():
            return {}
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))
        done = {}
        for line in complete.decode("utf-8").splitlines():
            record = json.loads(line)
            done[record["id"]] = record
        if done:
            log.info("resuming: %d records already done in %s", len(done), self.path)
        return done

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        payload = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
