"""The project's HTML pages: autoescaped Jinja2 templates in one shell, and the filters that write figures as a person
reads them. Each package that writes a page keeps its templates in its own `templates/` folder (the run report in
`wpo.reporting`, an evaluation's page in `wpo.evaluation`); `page.html.j2` (the shell), `macros.html.j2` (table, card,
figure) and `page.css` live here, below both.

Safety, by construction: the templates are autoescaped, so every value from a run's files is HTML-escaped wherever it
lands; data for a page's script go through `script_json` (shown with `textContent`, never as markup); the only
markup let through is the package's own style and script and matplotlib's SVG. A page's one script is allowed by its
hash in a Content-Security-Policy that blocks every request (`default-src 'none'`), so even a mistake in a template
could neither run an answer's `<script>` nor fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections import Counter
from datetime import datetime
from importlib import resources
from statistics import fmean
from typing import Any

from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined
from markupsafe import Markup


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
    """A CSV field as the pages show figures (4 significant digits); text stays as it is."""
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


def environment(*packages: str) -> Environment:
    """Templates from each of `packages`' `templates/` folder, then the shell and macros here; autoescaped, and an
    undefined name is an error rather than a blank."""
    env = Environment(
        loader=ChoiceLoader([PackageLoader(package, "templates") for package in (*packages, __name__)]),
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
    return env


def render_page(
    env: Environment, template: str, title: str, generated_at: datetime, script: str = "", **values: Any
) -> str:
    """A page in the shell: `page.css` inline, and `script` (the caller's own) allowed by its hash alone."""
    from wpo import __version__

    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    policy = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        + (f"script-src 'sha256-{digest}'; " if script else "")
        + "base-uri 'none'; form-action 'none'"
    )
    style = resources.files(__name__).joinpath("page.css").read_text(encoding="utf-8")
    return env.get_template(template).render(
        title=title,
        policy=policy,
        style=Markup(style),
        script=Markup(script),
        version=__version__,
        generated_at=generated_at.isoformat(timespec="seconds"),
        **values,
    )
