"""`wpo report`: one self-contained, offline HTML page per run — the pipeline, the pairs, the training curves, the
base's and the trained model's answers side by side, the export — and one per sweep linking to its runs.

A run is judged by looking at it; this puts in one file what otherwise takes five JSON Lines files and a TensorBoard.
Reading (`collect`) is kept apart from the markup (`render`), and both from writing (here): `build_run_report` is a
pure function of the run's files. Importing this package is light (the CLI reads `MAX_ITEMS` from it); the
reading and drawing modules load when a report is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from wpo.data.io import atomic_writer
from wpo.errors import ConfigError

if TYPE_CHECKING:
    from wpo.reporting.collect import SweepData

REPORT_NAME = "report.html"
MAX_ITEMS = 2000  # pairs, and held-out prompts, inlined in each browser: enough to read, light enough to open


def build_run_report(run_dir: Path, max_items: int = MAX_ITEMS, generated_at: datetime | None = None) -> str:
    """The HTML page of one run directory (written or not by `wpo run`: any stage's outputs that are there)."""
    from wpo.reporting.collect import collect_run
    from wpo.reporting.render import render_run

    return render_run(collect_run(run_dir, max_items), generated_at or datetime.now(UTC))


def write_run_report(run_dir: Path, max_items: int = MAX_ITEMS) -> Path:
    path = run_dir / REPORT_NAME
    page = build_run_report(run_dir, max_items)
    with atomic_writer(path) as handle:
        handle.write(page)
    return path


def write_sweep_page(sweep_dir: Path, sweep: SweepData | None = None) -> Path:
    """The sweep's own page: its comparison, linking each run's page (`wpo sweep` writes it after the runs);
    `sweep` is the collected sweep when the caller has it already."""
    from wpo.reporting.collect import collect_sweep
    from wpo.reporting.render import render_sweep

    path = sweep_dir / REPORT_NAME
    page = render_sweep(sweep or collect_sweep(sweep_dir), REPORT_NAME, datetime.now(UTC))
    with atomic_writer(path) as handle:
        handle.write(page)
    return path


def write_sweep_report(sweep_dir: Path, max_items: int = MAX_ITEMS) -> list[Path]:
    """The sweep's page, and the page of every run and shared data directory it links to."""
    from wpo.reporting.collect import collect_sweep, is_run_dir

    sweep = collect_sweep(sweep_dir)
    linked = [run.directory for run in sweep.runs if run.directory] + sweep.data_directories
    written = [write_run_report(directory, max_items) for directory in linked if is_run_dir(directory)]
    return [write_sweep_page(sweep_dir, sweep), *written]


def write_report(directory: str | Path, max_items: int = MAX_ITEMS) -> list[Path]:
    """`wpo report DIR`: DIR/report.html for a run directory or a sweep directory (then every run's too); returns the
    paths written, DIR's own first. A directory that is neither fails with one line naming it."""
    from wpo.reporting.collect import check_report_dir, is_sweep_dir

    directory = Path(directory)
    check_report_dir(directory)
    if max_items < 0:
        raise ConfigError(f"--max-items must be 0 or more, got {max_items}")
    if is_sweep_dir(directory):
        return write_sweep_report(directory, max_items)
    return [write_run_report(directory, max_items)]
