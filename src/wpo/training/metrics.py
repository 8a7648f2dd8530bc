"""Training metrics: one JSON object per logged step in `metrics.jsonl`, mirrored to the trackers the recipe names
(`train.report_to`): TensorBoard (`train/tensorboard/`) and trackio, a local-first tracker (its SQLite store under
`TRACKIO_DIR`, default `~/.cache/huggingface/trackio`; `trackio show` opens its dashboard)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wpo.data.io import write_jsonl


class MetricsLog:
    """Appends rows as they come (flushed), so a killed run keeps every logged step.

    On resume, rows past the resumed step are dropped first, so the file always reads as one uninterrupted run.
    """

    def __init__(
        self,
        train_dir: Path,
        resumed_step: int,
        enabled: bool = True,
        report_to: tuple[str, ...] = ("tensorboard",),
        run_name: str = "wpo",
        config: dict[str, Any] | None = None,
    ):
        self.path = train_dir / "metrics.jsonl"
        self.enabled = enabled
        self._writer = self._trackio = None
        if not enabled:
            return
        kept = [row for row in read_metrics(self.path) if row["step"] <= resumed_step] if resumed_step else []
        write_jsonl(self.path, kept)
        self._handle = self.path.open("a", encoding="utf-8")
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(train_dir / "tensorboard"), purge_step=resumed_step + 1)
        if "trackio" in report_to:
            import trackio

            self._trackio = trackio.init(project="wpo", name=run_name, config=config, resume="allow", embed=False)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._handle.write(json.dumps(row, allow_nan=False) + "\n")
        self._handle.flush()
        scalars = {f"train/{k}": v for k, v in row.items() if k != "step" and isinstance(v, int | float)}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, row["step"])
            self._writer.flush()
        if self._trackio is not None:
            self._trackio.log(scalars, step=row["step"])

    def close(self) -> None:
        if self.enabled:
            self._handle.close()
            if self._writer is not None:
                self._writer.close()
            if self._trackio is not None:
                self._trackio.finish()


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
