"""Held-out figures as types, each written and read by one function.

A measure compared on the base's and the trained model's answers to the same prompts is a `PairedMeasure`: base,
trained and delta means with their 95% CIs, and the prompt count. Files keep the flat keys they have always had
(`<name>_base`, `<name>_base_ci95`, `<name>_trained`, ..., `<name>_delta_ci95`, `<name>_n` in `metrics.json` and
`summary.json`; `<name>_base`, `<name>_trained` per prompt in `measures.jsonl`), written by `flat` and read by
`paired_measures` and `MeasureRow`, so old runs still load and nothing else takes a key apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci95: tuple[float, float] | None


@dataclass(frozen=True)
class PairedMeasure:
    name: str
    base: Estimate
    trained: Estimate
    delta: Estimate
    n: int | None = None

    def flat(self) -> dict[str, Any]:
        """The file keys of this measure."""
        keys: dict[str, Any] = {}
        for side, estimate in (("base", self.base), ("trained", self.trained), ("delta", self.delta)):
            keys[f"{self.name}_{side}"] = estimate.mean
            keys[f"{self.name}_{side}_ci95"] = list(estimate.ci95) if estimate.ci95 is not None else None
        if self.n is not None:
            keys[f"{self.name}_n"] = self.n
        return keys

    @classmethod
    def from_flat(cls, name: str, flat: dict[str, Any]) -> PairedMeasure:
        def estimate(side: str) -> Estimate:
            interval = flat.get(f"{name}_{side}_ci95")
            return Estimate(float(flat[f"{name}_{side}"]), tuple(interval) if interval is not None else None)

        n = flat.get(f"{name}_n")
        return cls(name, estimate("base"), estimate("trained"), estimate("delta"), int(n) if n is not None else None)


def measure_names(flat: dict[str, Any]) -> list[str]:
    """The measures a metrics or summary mapping holds: those its `measures` list names; in files written before the
    list, those with a delta."""
    if "measures" in flat:
        return [name for name in flat["measures"] if f"{name}_delta" in flat]
    return [key.removesuffix("_delta") for key in flat if key.endswith("_delta") and f"{key}_ci95" in flat]


def paired_measures(flat: dict[str, Any]) -> list[PairedMeasure]:
    return [PairedMeasure.from_flat(name, flat) for name in measure_names(flat)]


@dataclass(frozen=True)
class MeasureRow:
    """One held-out prompt of `measures.jsonl`: its id and texts, and each measure of both answers."""

    id: str
    data: dict[str, Any]  # the whole row: prompt, outputs, reference, constraint ...
    base: dict[str, float]
    trained: dict[str, float]

    @classmethod
    def from_record(cls, record: dict[str, Any], names: list[str]) -> MeasureRow:
        return cls(
            str(record["id"]),
            record,
            {name: record[f"{name}_base"] for name in names},
            {name: record[f"{name}_trained"] for name in names},
        )

    @staticmethod
    def fields(name: str) -> tuple[str, str]:
        """The row's keys for one measure of the base's and the trained model's answers."""
        return f"{name}_base", f"{name}_trained"


def row_measure_names(record: dict[str, Any]) -> list[str]:
    """The measures a `measures.jsonl` row holds (for files whose metrics.json does not list them)."""
    return [key.removesuffix("_base") for key in record if key.endswith("_base") and f"{key[:-5]}_trained" in record]
