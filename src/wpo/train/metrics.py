"""Training metrics: one JSON object per logged step in `metrics.jsonl`, mirrored to TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wpo.data.io import write_jsonl


class MetricsLog:
    """Appends rows as they come (flushed), so a killed run keeps every logged step.

    On resume, rows past the resumed step are dropped first, so the file always reads as one uninterrupted run.
    """

    def __init__(self, train_dir: Path, resumed_step: int, enabled: bool = True):
        self.path = train_dir / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        kept = [row for row in read_metrics(self.path) if row["step"] <= resumed_step] if resumed_step else []
        write_jsonl(self.path, kept)
        self._handle = self.path.open("a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(train_dir / "tensorboard"), purge_step=resumed_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._handle.write(json.dumps(row, allow_nan=False) + "\n")
        self._handle.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                self._writer.add_scalar(f"train/{key}", value, row["step"])
        self._writer.flush()

    def close(self) -> None:
        if self.enabled:
            self._handle.close()
            self._writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything before it is intact
    return rows
