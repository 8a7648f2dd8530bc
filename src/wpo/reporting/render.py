"""Collected run (or sweep) data → one self-contained HTML page, through the Jinja2 templates in `templates/`.

The templates hold every piece of markup (`page` the shell, `run` and `sweep` the pages, `run/*` a run's parts,
`macros` the building blocks); this module holds what they need that is not markup: the filters that write figures as
a person reads them, and which rounds show which part.

Safety, by construction: the templates are autoescaped, so every value from a run's files is HTML-escaped wherever it
lands; the browsers' data go through `script_json` (shown by the page's script with `textContent`, never as markup);
the only trusted markup is the package's own style and script and matplotlib's SVG. The page's one script is allowed
by its hash in a Content-Security-Policy that blocks every request (`default-src 'none'`), so even a mistake in a
template could neither run an answer's `<script>` nor fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from statistics import fmean
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from wpo.exporting.card import judged_by
from wpo.reporting import charts
from wpo.reporting.collect import READ_WRITTEN_KEYS, RoundData, RunData, SweepData

PAIRS_PER_PAGE = 25
PROMPTS_PER_PAGE = 20
TRAINING_HEADLINE = (
    "loss",
    "weight_mean",
    "weight_min",
    "weight_max",
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
EVAL_HEADLINE = (
    "win_rate",
    "standard_error",
    "length_controlled_winrate",
    "discrete_win_rate",
    "n_wins",
    "n_draws",
    "n_total",
    "avg_length",
    "judge",
    "lc_formula",
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


# --- filters: figures as a person reads them ------------------------------------------------------------------------


def number(value: Any, signed: bool = False) -> str:
    """4 significant digits, thousands grouped; missing (None, or pandas' NaN) is a dash."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    if isinstance(value, float):
        return f"{value:+.4g}" if signed else f"{value:.4g}"
    return str(value)


def interval(bounds: list[float] | None, signed: bool = False) -> str:
    return f"[{number(bounds[0], signed)}, {number(bounds[1], signed)}]" if bounds else ""


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shares(counts: Counter[str]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in counts.most_common())


def csv_cell(value: str) -> str:
    """A CSV field as the page shows figures (4 significant digits); text stays as it is."""
    try:
        return number(float(value)) if value.strip() else ""
    except ValueError:
        return value


def script_json(payload: Any) -> Markup:
    """JSON to sit inside a `<script type="application/json">`: `<`, `>` and `&` as `\\u` escapes (still the same
    JSON), so no text in the data — `</script>`, `<!--` — can end the element early."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return Markup(text)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def relative_href(target: Path, base: Path) -> str:
    """A relative link (it survives moving the sweep directory), each path component URL-quoted."""
    return "/".join(quote(part) for part in target.relative_to(base).parts)


# --- what the templates ask of the data -----------------------------------------------------------------------------


def measured(metrics: dict[str, Any], suffix: str) -> list[str]:
    """The measures that have `<name><suffix>` in the metrics."""
    return [name for name in metrics.get("measures", []) if f"{name}{suffix}" in metrics]


def direction(bounds: list[float]) -> tuple[str, str]:
    """Whether a delta's CI excludes zero, and which way: a fact about the interval, not a judgement."""
    if bounds[0] > 0:
        return "up", "↑"
    if bounds[1] < 0:
        return "down", "↓"
    return "flat", "≈"


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
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("wpo.reporting", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        number=number,
        interval=interval,
        seconds=seconds,
        shorten=shorten,
        shares=shares,
        mean=fmean,
        csv_cell=csv_cell,
        script_json=script_json,
        compact_json=compact_json,
        base64=lambda data: base64.b64encode(data).decode(),
    )
    env.tests["logged_in"] = logged_in
    env.globals.update(
        measured=measured,
        direction=direction,
        judged_by=judged_by,
        stage_rows=stage_rows,
        relative_href=relative_href,
        data_chart=trusted_svg(charts.data_chart),
        training_chart=trusted_svg(charts.training_chart),
        eval_chart=trusted_svg(charts.eval_chart),
        read_written_keys=READ_WRITTEN_KEYS,
        stage_states=STAGE_STATES,
        training_headline=TRAINING_HEADLINE,
        training_card_lines=TRAINING_CARD,
        eval_headline_keys=EVAL_HEADLINE,
        pairs_per_page=PAIRS_PER_PAGE,
        prompts_per_page=PROMPTS_PER_PAGE,
    )
    return env


def _asset(name: str) -> str:
    return resources.files("wpo.reporting").joinpath(name).read_text(encoding="utf-8")


def render_page(template: str, title: str, generated_at: datetime, with_script: bool = True, **values: Any) -> str:
    """A page in the shell: the package's own style (and script, allowed by its hash alone) inline."""
    from wpo import __version__

    script = _asset("report.js") if with_script else ""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    policy = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        + (f"script-src 'sha256-{digest}'; " if script else "")
        + "base-uri 'none'; form-action 'none'"
    )
    return (
        environment()
        .get_template(template)
        .render(
            title=title,
            policy=policy,
            style=Markup(_asset("report.css")),
            script=Markup(script),
            version=__version__,
            generated_at=generated_at.isoformat(timespec="seconds"),
            **values,
        )
    )


def render_run(run: RunData, generated_at: datetime) -> str:
    name = run.directory.resolve().name
    return render_page("run.html.j2", f"wpo report: {name}", generated_at, run=run, name=name, sections=sections(run))


def render_sweep(sweep: SweepData, report_name: str, generated_at: datetime) -> str:
    name = sweep.directory.resolve().parent.name + "/" + sweep.directory.name
    return render_page(
        "sweep.html.j2", f"wpo sweep: {name}", generated_at, sweep=sweep, name=name, report_name=report_name
    )
