"""Training metrics: one JSON object per logged step in `metrics.jsonl`, mirrored to the trackers the recipe names
(`train.report_to`): TensorBoard (`train/tensorboard/`) and trackio, a local-first tracker (its SQLite store under
`TRACKIO_DIR`, default `~/.cache/huggingface/trackio`; `trackio show` opens its dashboard). Also what the WPO weights
did: a batch's figures (`weight_figures`) and the run's, pair by pair (`WeightLedger`, `pair_weights.jsonl`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wpo.data.io import write_jsonl

if TYPE_CHECKING:
    from wpo.training.tokenize import TokenizedPair

PAIR_WEIGHTS_FILE = "pair_weights.jsonl"
# characters TensorBoard refuses in a tag (it would rename the tag and warn at every step)
TAG_UNSAFE = re.compile(r"[^-/\w.]")


def effective_sample_size(weights: Sequence[float]) -> float:
    """Kish's effective sample size `(Σw)² / Σw²`: how many equally weighted pairs carry as much of the loss as these
    (all of them when the weights are equal, 1 when one pair has it all); 0 when every weight is 0."""
    squares = sum(weight * weight for weight in weights)
    return sum(weights) ** 2 / squares if squares else 0.0


def weight_figures(weights: Sequence[float], clamped: Sequence[bool], kinds: Sequence[str]) -> dict[str, Any]:
    """A batch's WPO weights in figures: their effective sample size, as a count and as a share of the batch; the
    share held at the clamp (unclamped weight ≥ 1); and the mean weight per pair kind (`TokenizedPair.kind`)."""
    ess = effective_sample_size(weights)
    by_kind: dict[str, list[float]] = {}
    for kind, weight in zip(kinds, weights, strict=True):
        by_kind.setdefault(kind, []).append(weight)
    return {
        "weight_ess": ess,
        "weight_ess_share": ess / len(weights),
        "weight_clamped_share": sum(map(bool, clamped)) / len(clamped),
        "weight_mean_by_source": {kind: sum(values) / len(values) for kind, values in sorted(by_kind.items())},
    }


class WeightLedger:
    """The run's WPO weights pair by pair — each pair's weight and implicit reward margin (β·z) at its first and its
    last visit, and how often it was visited — and summed over every visit, for `pair_weights.jsonl` and the manifest.
    `state()` is plain JSON, saved with each checkpoint, so a resumed run ends with the uninterrupted run's table."""

    def __init__(self, state: dict[str, Any] | None = None):
        state = state or {}
        self.pairs: dict[str, dict[str, Any]] = state.get("pairs", {})  # by id, in order of first visit
        self.totals: dict[str, Any] = state.get(
            "totals",
            {"visits": 0, "weight": 0.0, "weight_squared": 0.0, "clamped": 0, "steps": 0, "ess_share": 0.0},
        )
        self.by_kind: dict[str, list[float]] = state.get("by_kind", {})  # kind → [weight sum, visits]

    def record(
        self,
        step: int,
        pairs: Sequence[TokenizedPair],
        weights: Sequence[float],
        clamped: Sequence[bool],
        margins: Sequence[float],
    ) -> None:
        """One optimizer step (1-based `step`) over these pairs, each with its weight, clamp and reward margin."""
        totals = self.totals
        for pair, weight, at_clamp, margin in zip(pairs, weights, clamped, margins, strict=True):
            entry = self.pairs.get(pair.id)
            if entry is None:
                entry = self.pairs[pair.id] = {
                    "id": pair.id,
                    "source_chosen": pair.source_chosen,
                    "source_rejected": pair.source_rejected,
                    "weight_first": weight,
                    "margin_first": margin,
                    "step_first": step,
                    "visits": 0,
                }
            entry.update(weight_last=weight, margin_last=margin, step_last=step, visits=entry["visits"] + 1)
            totals["visits"] += 1
            totals["weight"] += weight
            totals["weight_squared"] += weight * weight
            totals["clamped"] += bool(at_clamp)
            kind = self.by_kind.setdefault(pair.kind, [0.0, 0])
            kind[0] += weight
            kind[1] += 1
        totals["steps"] += 1
        totals["ess_share"] += effective_sample_size(weights) / len(weights)

    def rows(self) -> list[dict[str, Any]]:
        """`pair_weights.jsonl`: one row per pair visited, in order of first visit."""
        fields = ("id", "source_chosen", "source_rejected", "weight_first", "weight_last", "margin_first")
        fields += ("margin_last", "step_first", "step_last", "visits")
        return [{name: entry[name] for name in fields} for entry in self.pairs.values()]

    def summary(self) -> dict[str, Any]:
        """The run's figures over every pair visit (and `weight_ess_share_step_mean`, the steps' shares averaged)."""
        totals = self.totals
        visits = totals["visits"]
        if not visits:
            return {"pair_visits": 0}
        squares = totals["weight_squared"]
        ess = totals["weight"] ** 2 / squares if squares else 0.0
        return {
            "pair_visits": visits,
            "pairs_visited": len(self.pairs),
            "weight_mean": totals["weight"] / visits,
            "weight_ess": ess,
            "weight_ess_share": ess / visits,
            "weight_ess_share_step_mean": totals["ess_share"] / totals["steps"],
            "weight_clamped_share": totals["clamped"] / visits,
            "weight_mean_by_source": {kind: total / count for kind, (total, count) in sorted(self.by_kind.items())},
        }

    def state(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "totals": self.totals, "by_kind": self.by_kind}

    def write(self, train_dir: Path) -> Path:
        path = train_dir / PAIR_WEIGHTS_FILE
        write_jsonl(path, self.rows())
        return path


def tracker_scalars(row: dict[str, Any]) -> dict[str, float]:
    """A row's numbers as TensorBoard and trackio take them, under `train/`: a nested figure (the mean weight per
    pair kind) as one scalar per key, `train/weight_mean_by_source/<kind>`, with `:` and spaces written `_`."""
    scalars = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for inner, number in value.items():
                scalars[TAG_UNSAFE.sub("_", f"train/{key}/{inner}")] = number
        elif key != "step" and isinstance(value, int | float):
            scalars[f"train/{key}"] = value
    return scalars


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
        scalars = tracker_scalars(row)
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
