"""Read a run directory (or a sweep directory) into plain data for the report.

Reading only: nothing here knows HTML, so the page can change without touching how the files are read, and the
tests can check the numbers apart from the markup. Every file is optional — a stage that did not run leaves its
part empty — but a file that is there and unreadable fails with its path (and line), as the stages' readers do.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wpo.config import ROUND_STAGES, STAGES
from wpo.data.io import BadRecordPolicy, read_records
from wpo.data.schemas import Annotation, RecordInvalid, parse_annotation, parse_candidates, parse_pair
from wpo.errors import DataError, WpoError
from wpo.figures import MeasureRow, row_measure_names
from wpo.layout import output_in
from wpo.manifest import MANIFEST_NAME, Counts, file_sha256, read_manifest
from wpo.training.metrics import PAIR_WEIGHTS_FILE

ROUND_DIR = re.compile(r"round-(\d+)")


@dataclass(frozen=True)
class StageStatus:
    """One stage of one round: its manifest if it finished, and what the last `wpo run` did with it."""

    name: str
    directory: Path
    manifest: dict[str, Any] | None
    last_run: dict[str, Any] | None

    @property
    def state(self) -> str:
        if self.manifest is not None and self.manifest.get("completed"):
            return "done"
        return "incomplete" if self.directory.is_dir() else "absent"

    @property
    def counts(self) -> Counts:
        return Counts.from_json((self.manifest or {}).get("counts"), self.name)


@dataclass
class CandidateStats:
    """How many candidates each source gave, and their scores: what pairing chose from."""

    path: Path
    prompts: int = 0
    scores_by_source: dict[str, list[float]] = field(default_factory=dict)
    count_by_source: Counter[str] = field(default_factory=Counter)
    unscored: int = 0
    offpolicy_missing: dict[str, int] = field(default_factory=dict)  # prompts kept without the field, by field


@dataclass
class PairStats:
    """All pairs' sources, scores, margins and lengths (characters), and the first pairs (up to the cap) for the
    browser."""

    total: int = 0
    sources: Counter[tuple[str, str]] = field(default_factory=Counter)
    chosen_scores: list[float] = field(default_factory=list)
    rejected_scores: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    chosen_lengths: list[int] = field(default_factory=list)
    rejected_lengths: list[int] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen_by_source(self) -> Counter[str]:
        return self._by_source(0)

    @property
    def rejected_by_source(self) -> Counter[str]:
        return self._by_source(1)

    def _by_source(self, side: int) -> Counter[str]:
        """Pairs by the chosen (0) or rejected (1) answer's source, summed over the (chosen, rejected) counts."""
        counts = Counter[str]()
        for key, n in self.sources.items():
            counts[key[side]] += n
        return counts

    @property
    def chosen_longer(self) -> int:
        """How many pairs have the longer answer chosen: a length bias in the reward shows here first."""
        return sum(c > r for c, r in zip(self.chosen_lengths, self.rejected_lengths, strict=True))


@dataclass
class PairWeights:
    """What WPO's weights did in one training: `train/pair_weights.jsonl` (each pair's weight at its first and last
    visit) and the manifest's figures over every visit."""

    rows: list[dict[str, Any]]
    run: dict[str, Any]

    def by_kind(self) -> list[dict[str, Any]]:
        """Per pair kind (`<chosen's source> vs <rejected's source>`): pairs, and their mean weight at the first and
        the last visit, and over every visit (the manifest's)."""
        kinds: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            kinds.setdefault(
                f"{row['source_chosen'] or 'unknown'} vs {row['source_rejected'] or 'unknown'}", []
            ).append(row)
        every_visit = self.run.get("weight_mean_by_source", {})
        return [
            {
                "kind": kind,
                "pairs": len(rows),
                "first": sum(row["weight_first"] for row in rows) / len(rows),
                "last": sum(row["weight_last"] for row in rows) / len(rows),
                "every_visit": every_visit.get(kind),
            }
            for kind, rows in sorted(kinds.items())
        ]

    def lowest(self, count: int = 10) -> list[dict[str, Any]]:
        """The pairs WPO weighed least at their last visit: the ones it all but left out."""
        return sorted(self.rows, key=lambda row: (row["weight_last"], row["id"]))[:count]


@dataclass
class EvalData:
    """The headline metrics and, per held-out prompt, the baseline's and the model's answers with their measures."""

    metrics: dict[str, Any]
    generator: str | None
    baseline_generator: str | None  # whose answers sit beside the model's: the base model's, else the judge's baseline
    judged_against: str | None  # the judge's baseline (annotations' generator_1): the reference or the base model
    measures: list[str]  # per-prompt measure names; empty when the run has no measures.jsonl
    items_from: str | None  # the file the per-prompt answers come from
    items: list[dict[str, Any]]
    total_prompts: int
    highlight_measure: str | None
    repeated_outputs: list[tuple[str, int]]  # the model's answers given more than once, most frequent first

    @property
    def distinct_answers(self) -> int:
        return self.total_prompts - sum(n - 1 for _, n in self.repeated_outputs)


@dataclass
class ExportData:
    model: str | None
    files: list[dict[str, Any]]
    card: str | None


@dataclass
class RoundData:
    """One round's directory: the run directory itself for round 1, `round-k/` for round k ≥ 2."""

    number: int
    directory: Path
    stages: list[StageStatus]
    candidates: CandidateStats | None
    pairs: PairStats | None
    training: list[dict[str, Any]]
    pair_weights: PairWeights | None
    evaluation: EvalData | None
    export: ExportData | None


@dataclass
class RunData:
    directory: Path
    summary: dict[str, Any] | None
    rounds: list[RoundData]


@dataclass
class SweepRun:
    name: str
    row: dict[str, str]
    directory: Path | None  # None when runs.csv names a run directory that is not under the sweep directory
    data_directory: Path | None  # the shared data directory whose pairs this run trained on, when found


@dataclass
class SweepData:
    directory: Path
    grid_keys: list[str]
    runs: list[SweepRun]
    comparison_columns: list[str]
    comparison: list[dict[str, str]]
    plot_png: bytes | None
    data_directories: list[Path]


def read_json(path: Path) -> Any:
    """A JSON file, or None when it is not there; an unreadable one fails naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def parsed_records(path: Path, parse: Callable[[dict[str, Any], str], Any]) -> Iterator[Any]:
    """The records of a JSON Lines (or JSON array) file through a contract's parser, streamed, failing at the first
    bad one with `file:line` — the stages wrote these files, so a bad line means the file is not what it claims."""
    policy = BadRecordPolicy()
    for item in read_records(str(path), policy):
        try:
            yield parse(item.data, item.where)
        except RecordInvalid as exc:
            policy.reject(item.where, exc.reason, exc.message)


def is_run_dir(directory: Path) -> bool:
    return (directory / "summary.json").is_file() or any(
        (directory / stage / MANIFEST_NAME).is_file() for stage in STAGES
    )


def is_sweep_dir(directory: Path) -> bool:
    return (directory / "runs.csv").is_file()


def check_report_dir(directory: Path) -> None:
    """A one-line error naming the directory when it holds neither a run nor a sweep."""
    if not directory.is_dir():
        raise WpoError(f"{directory}: no such directory")
    if is_run_dir(directory) or is_sweep_dir(directory):
        return
    hint = f"; did you mean {directory / 'sweep'}?" if is_sweep_dir(directory / "sweep") else ""
    raise WpoError(
        f"{directory}: not a run directory (no summary.json, no <stage>/{MANIFEST_NAME}) nor a sweep "
        f"directory (no runs.csv){hint}"
    )


def round_directories(run_dir: Path) -> list[tuple[int, Path]]:
    """Round 1 is the run directory itself; `round-k/` holds round k (see `Recipe.round_output_dir`)."""
    later = sorted(
        (int(match.group(1)), path)
        for path in run_dir.iterdir()
        if path.is_dir() and (match := ROUND_DIR.fullmatch(path.name)) and int(match.group(1)) >= 2
    )
    return [(1, run_dir), *later]


def collect_run(run_dir: Path, cap: int) -> RunData:
    """Everything the report shows about one run; `cap` bounds the pairs and eval prompts kept for the browsers."""
    summary = read_json(run_dir / "summary.json")
    rounds = [collect_round(number, directory, summary, cap) for number, directory in round_directories(run_dir)]
    return RunData(directory=run_dir, summary=summary, rounds=rounds)


def collect_round(number: int, directory: Path, summary: dict[str, Any] | None, cap: int) -> RoundData:
    names = STAGES if number == 1 else [s for s in STAGES if s in ROUND_STAGES or (directory / s).is_dir()]
    last_run = (summary or {}).get("stages", {})
    stages = [
        StageStatus(
            name,
            directory / name,
            read_manifest(directory / name),
            last_run.get(name if number == 1 else f"round-{number}/{name}"),
        )
        for name in names
    ]
    scored = output_in(directory, "score")
    candidates_path = scored if scored.is_file() else output_in(directory, "sample")
    pairs_path = output_in(directory, "pair")
    offpolicy_missing = (
        next(stage for stage in stages if stage.name == "sample").counts.other.get("offpolicy_missing") or {}
    )
    return RoundData(
        number=number,
        directory=directory,
        stages=stages,
        candidates=candidate_stats(candidates_path, offpolicy_missing) if candidates_path.is_file() else None,
        pairs=pair_stats(pairs_path, cap) if pairs_path.is_file() else None,
        training=training_rows(directory / "train" / "metrics.jsonl"),
        pair_weights=pair_weights(directory / "train"),
        evaluation=eval_data(directory / "eval", cap) if output_in(directory, "eval").is_file() else None,
        export=export_data(directory / "export"),
    )


def candidate_stats(path: Path, offpolicy_missing: dict[str, int]) -> CandidateStats:
    """The candidates by source and their scores; `offpolicy_missing` is the sample manifest's count of prompts kept
    without an off-policy field (`sample.offpolicy_missing: skip_candidate`)."""
    stats = CandidateStats(path, offpolicy_missing=offpolicy_missing)
    for record in parsed_records(path, parse_candidates):
        stats.prompts += 1
        for candidate in record.candidates:
            stats.count_by_source[candidate.source] += 1
            if candidate.score is None:
                stats.unscored += 1
            else:
                stats.scores_by_source.setdefault(candidate.source, []).append(candidate.score)
    return stats


def pair_stats(path: Path, cap: int) -> PairStats:
    stats = PairStats()
    for pair in parsed_records(path, parse_pair):
        stats.total += 1
        chosen_source, rejected_source = pair.source_chosen or "unknown", pair.source_rejected or "unknown"
        stats.sources[chosen_source, rejected_source] += 1
        margin = None
        if pair.score_chosen is not None and pair.score_rejected is not None:
            margin = pair.score_chosen - pair.score_rejected
            stats.chosen_scores.append(pair.score_chosen)
            stats.rejected_scores.append(pair.score_rejected)
            stats.margins.append(margin)
        stats.chosen_lengths.append(len(pair.chosen))
        stats.rejected_lengths.append(len(pair.rejected))
        if len(stats.items) < cap:
            stats.items.append(
                {
                    "id": pair.id,
                    "prompt": pair.prompt,
                    "chosen": pair.chosen,
                    "rejected": pair.rejected,
                    "score_chosen": pair.score_chosen,
                    "score_rejected": pair.score_rejected,
                    "margin": margin,
                    "source_chosen": chosen_source,
                    "source_rejected": rejected_source,
                    "length_chosen": len(pair.chosen),
                    "length_rejected": len(pair.rejected),
                }
            )
    return stats


def training_rows(path: Path) -> list[dict[str, Any]]:
    from wpo.training.metrics import read_metrics  # tolerates the line a kill cut short, as the trainer's resume does

    return read_metrics(path)


def pair_weights(train_dir: Path) -> PairWeights | None:
    """None for a training that wrote no per-pair weights (unfinished, or from before they were written)."""
    path = train_dir / PAIR_WEIGHTS_FILE
    if not path.is_file():
        return None
    rows = [item.data for item in read_records(str(path))]
    return PairWeights(rows=rows, run=(read_manifest(train_dir) or {}).get("weights") or {})


def eval_data(directory: Path, cap: int) -> EvalData:
    """Per prompt from `measures.jsonl` (the base model's and the trained model's answers with every measure), the
    judge's preference joined from `annotations.json`; without measures (no base answers), the baseline's and the
    model's answers from the annotations alone."""
    metrics = read_json(directory / "metrics.json")
    annotations_path = directory / "annotations.json"
    annotations: list[Annotation] = (
        list(parsed_records(annotations_path, parse_annotation)) if annotations_path.is_file() else []
    )
    generator = annotations[0].generator_2 if annotations else None
    measures_path = directory / "measures.jsonl"
    rows = [item.data for item in read_records(str(measures_path))] if measures_path.is_file() else []
    if rows:
        names = metrics.get("measures") or row_measure_names(rows[0])
        missing = [field for n in names for field in MeasureRow.fields(n) if field not in rows[0]]
        if missing:
            raise DataError(f"{measures_path}:1: no field {missing[0]} (metrics.json lists the measure {names[0]})")
        base_outputs = read_json(directory / "base_outputs.json") or [{}]
        baseline = base_outputs[0].get("generator", "base model")
        preferences = _preferences_by_row(rows, annotations)
        highlight = "reward" if "reward" in names else names[0]
        items = [_measured_item(row, names, preference) for row, preference in zip(rows, preferences, strict=True)]
        items = _highlights_first(items, rows, highlight)
        outputs = [row["output"] for row in rows]
        source = measures_path.name
    else:
        names, highlight = [], None
        baseline = annotations[0].generator_1 if annotations else metrics.get("reference_generator")
        items = [
            {
                "id": str(number),
                "prompt": a.instruction,
                "reference": None,
                "constraint": None,
                "baseline": a.output_1,
                "model": a.output_2,
                "baseline_measures": {},
                "model_measures": {},
                "preference": a.preference,
                "label": None,
            }
            for number, a in enumerate(annotations, 1)
        ]
        outputs = [a.output_2 for a in annotations]
        source = annotations_path.name if annotations else None
    repeated = [(text, n) for text, n in Counter(outputs).most_common() if n > 1]
    return EvalData(
        metrics=metrics,
        generator=generator,
        baseline_generator=baseline,
        judged_against=annotations[0].generator_1 if annotations else None,
        measures=names,
        items_from=source,
        items=items[:cap],
        total_prompts=len(items),
        highlight_measure=highlight,
        repeated_outputs=repeated,
    )


def _preferences_by_row(rows: list[dict[str, Any]], annotations: list[Annotation]) -> list[float | None]:
    """The judge's preference for each measures row: the eval stage writes both files in prompt order, so row i is
    annotation i — trusted only when every instruction matches."""
    matches = len(rows) == len(annotations) and all(
        row["prompt"] == a.instruction for row, a in zip(rows, annotations, strict=True)
    )
    return [a.preference for a in annotations] if matches else [None] * len(rows)


def _measured_item(record: dict[str, Any], names: list[str], preference: float | None) -> dict[str, Any]:
    row = MeasureRow.from_record(record, names)
    return {
        "id": row.id,
        "prompt": record["prompt"],
        "reference": record.get("reference"),
        "constraint": record.get("constraint"),
        "baseline": record["base_output"],
        "model": record["output"],
        "baseline_measures": row.base,
        "model_measures": row.trained,
        "preference": preference,
        "label": None,
    }


def _highlights_first(items: list[dict[str, Any]], rows: list[dict[str, Any]], measure: str) -> list[dict[str, Any]]:
    """The three prompts `side_by_side.md` leads with (the same fixed rule), labelled, then the rest in file order."""
    from wpo.evaluation.measures import highlights

    position = {id(row): index for index, row in enumerate(rows)}  # by identity: ids need not be unique here
    first: list[dict[str, Any]] = []
    for label, row in highlights(rows, measure):
        item = items[position[id(row)]]
        if item["label"] is None:  # with fewer than three prompts, one prompt can be picked twice
            item["label"] = f"{label} in {measure}"
            first.append(item)
    return first + [item for item in items if item["label"] is None]


def export_data(directory: Path) -> ExportData | None:
    report = read_json(directory / "quantization_report.json")
    card_path = directory / "README.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    if report is None and card is None:
        return None
    return ExportData(model=(report or {}).get("model"), files=(report or {}).get("files", []), card=card)


def trained_pairs_sha256(train_config: dict[str, Any]) -> str:
    """The sha256 of the pairs a train stage read, from its manifest's config (`pairs_sha256` in runs before the
    resolved stage runs)."""
    entry = (train_config.get("inputs") or {}).get("train.pairs") or {}
    return entry.get("fingerprint") or train_config.get("pairs_sha256", "")


def collect_sweep(sweep_dir: Path) -> SweepData:
    """`runs.csv`, `comparison.csv` and `comparison.png` as `wpo sweep` wrote them, each run matched to its
    directory under `runs/` and to the shared data directory whose pairs it trained on (by the pairs file's sha256,
    which the run's train manifest records)."""
    run_rows = _csv_rows(sweep_dir / "runs.csv")
    comparison_path = sweep_dir / "comparison.csv"
    comparison = _csv_rows(comparison_path) if comparison_path.is_file() else []
    data_dirs = sorted(path for path in sweep_dir.glob("data-*") if path.is_dir())
    pairs_by_sha = {
        file_sha256(output_in(path, "pair")): path for path in data_dirs if output_in(path, "pair").is_file()
    }
    columns = list(run_rows[0]) if run_rows else []
    grid_keys = columns[: columns.index("seed")] if "seed" in columns else []
    runs = []
    for row in run_rows:
        name = Path(row.get("run_dir", "")).name
        directory = sweep_dir / "runs" / name
        directory = directory if name and directory.is_dir() else None
        manifest = read_manifest(directory / "train") if directory else None
        data_dir = pairs_by_sha.get(trained_pairs_sha256((manifest or {}).get("config", {})))
        runs.append(SweepRun(name=name, row=row, directory=directory, data_directory=data_dir))
    plot = sweep_dir / "comparison.png"
    return SweepData(
        directory=sweep_dir,
        grid_keys=grid_keys,
        runs=runs,
        comparison_columns=list(comparison[0]) if comparison else [],
        comparison=comparison,
        plot_png=plot.read_bytes() if plot.is_file() else None,
        data_directories=data_dirs,
    )


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
