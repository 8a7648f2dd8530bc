"""Collected run (or sweep) data → one self-contained HTML page, through the templates in `templates/`: `run.html.j2`
and `sweep.html.j2` the pages, `run/<section>.html.j2` a run's parts, `browser.html.j2` the pair and prompt browsers
(`report.js` drives them). The shell, the filters and the escaping rules are `wpo.pages`'; this module holds what the
templates ask of the data that is not markup: which rounds show which part, a delta's direction, the stages' rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment
from markupsafe import Markup

from wpo import pages
from wpo.exporting.card import judged_by
from wpo.figures import PairedMeasure, paired_measures
from wpo.reporting import charts
from wpo.reporting.collect import RoundData, RunData, SweepData

PAIRS_PER_PAGE = 25
PROMPTS_PER_PAGE = 20
TRAINING_HEADLINE = (
    "loss",
    "weight_mean",
    "weight_min",
    "weight_max",
    "weight_ess_share",
    "weight_clamped_share",
    "weight_scale",
    "reward_margin",
    "reward_accuracy",
    "learning_rate",
    "grad_norm",
)
TRAINING_CARD = (
    ("loss", "loss"),
    ("reward_accuracy", "reward accuracy"),
    ("reward_margin", "reward margin"),
    ("weight_mean", "mean WPO weight"),
)
STAGE_STATES = {
    "done": "done",
    "incomplete": "incomplete: no finished manifest (running, or stopped)",
    "absent": "did not run",
}


@dataclass(frozen=True)
class Section:
    """One section of a run's page; `rounds` are those that show its part (`templates/run/<anchor>.html.j2`), None
    for the sections about the whole run."""

    anchor: str
    title: str
    rounds: list[RoundData] | None = None
    nothing: str = ""


def sections(run: RunData) -> list[Section]:
    def showing(has_part: Callable[[RoundData], Any]) -> list[RoundData]:
        return [round_ for round_ in run.rounds if has_part(round_)]

    def trained(round_: RoundData) -> bool:
        return bool(round_.training) or any(s.name == "train" and s.state == "done" for s in round_.stages)

    return [
        Section("glance", "At a glance"),
        Section("pipeline", "Pipeline"),
        Section(
            "data",
            "Data",
            showing(lambda r: r.candidates or r.pairs),
            "no sample, score or pair stage in this run directory",
        ),
        Section("training", "Training", showing(trained), "no training in this run directory"),
        Section("evaluation", "Evaluation", showing(lambda r: r.evaluation), "no evaluation in this run directory"),
        Section("export", "Export", showing(lambda r: r.export), "no export in this run directory"),
    ]


# --- what the templates ask of the data -----------------------------------------------------------------------------


def measured(metrics: dict[str, Any]) -> list[PairedMeasure]:
    """The held-out measures of an eval's metrics, typed (`wpo.figures`)."""
    return paired_measures(metrics)


def direction(bounds: list[float]) -> tuple[str, str]:
    """Whether a delta's CI excludes zero, and which way: a fact about the interval, not a judgement."""
    if bounds[0] > 0:
        return "up", "↑"
    if bounds[1] < 0:
        return "down", "↓"
    return "flat", "≈"


def relative_href(target: Path, base: Path) -> str:
    """A relative link (it survives moving the sweep directory), each path component URL-quoted."""
    return "/".join(quote(part) for part in target.relative_to(base).parts)


def stage_rows(run: RunData) -> list[tuple[str, Any]]:
    """(label, stage) for every stage of every round: later rounds' stages prefixed with their directory."""
    return [
        (stage.name if round_.number == 1 else f"round-{round_.number}/{stage.name}", stage)
        for round_ in run.rounds
        for stage in round_.stages
    ]


def logged_in(key: str, rows: Iterable[dict[str, Any]]) -> bool:
    return any(key in row for row in rows)


def trusted_svg(draw: Callable[..., str | None]) -> Callable[..., Markup | None]:
    """A chart function whose SVG (matplotlib's, its text escaped by matplotlib) the templates insert as markup."""

    def drawn(*args: Any) -> Markup | None:
        svg = draw(*args)
        return Markup(svg) if svg else None

    return drawn


@cache
def _environment() -> Environment:
    env = pages.environment(__package__, "wpo.evaluation")
    env.tests["logged_in"] = logged_in
    env.globals.update(
        measured=measured,
        direction=direction,
        judged_by=judged_by,
        stage_rows=stage_rows,
        relative_href=relative_href,
        data_chart=trusted_svg(charts.data_chart),
        training_chart=trusted_svg(charts.training_chart),
        weights_chart=trusted_svg(charts.weights_chart),
        eval_chart=trusted_svg(charts.eval_chart),
        stage_states=STAGE_STATES,
        training_headline=TRAINING_HEADLINE,
        training_card_lines=TRAINING_CARD,
        pairs_per_page=PAIRS_PER_PAGE,
        prompts_per_page=PROMPTS_PER_PAGE,
    )
    return env


def _page(template: str, title: str, generated_at: datetime, **values: Any) -> str:
    script = resources.files(__package__).joinpath("report.js").read_text(encoding="utf-8")
    return pages.render_page(_environment(), template, title, generated_at, script, **values)


def render_run(run: RunData, generated_at: datetime) -> str:
    name = run.directory.resolve().name
    return _page("run.html.j2", f"wpo report: {name}", generated_at, run=run, name=name, sections=sections(run))


def render_sweep(sweep: SweepData, report_name: str, generated_at: datetime) -> str:
    name = sweep.directory.resolve().parent.name + "/" + sweep.directory.name
    return _page("sweep.html.j2", f"wpo sweep: {name}", generated_at, sweep=sweep, name=name, report_name=report_name)
