"""Collected run (or sweep) data → one self-contained HTML page, as a string.

Safety, by construction: every value from a run's files goes through `esc` (HTML) or `script_json` (data for the
browsers, which the page's script shows with `textContent`, never as markup); the page's one script is allowed by
its hash in a Content-Security-Policy that blocks every request (`default-src 'none'`), so even a mistake here could
neither run an answer's `<script>` nor fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from statistics import fmean
from typing import Any
from urllib.parse import quote

from wpo.exporting.card import judged_by
from wpo.reporting import charts
from wpo.reporting.collect import (
    READ_WRITTEN_KEYS,
    CandidateStats,
    EvalData,
    PairStats,
    RoundData,
    RunData,
    StageStatus,
    SweepData,
)

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
SECTIONS = (
    ("glance", "At a glance"),
    ("pipeline", "Pipeline"),
    ("data", "Data"),
    ("training", "Training"),
    ("evaluation", "Evaluation"),
    ("export", "Export"),
)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def script_json(payload: Any) -> str:
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
    return text


def number(value: Any, signed: bool = False) -> str:
    """A figure as a person reads it: 4 significant digits, thousands grouped; missing is a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    if isinstance(value, float):
        return f"{value:+.4g}" if signed else f"{value:.4g}"
    return esc(value)


def interval(bounds: list[float] | None, signed: bool = False) -> str:
    return f"[{number(bounds[0], signed)}, {number(bounds[1], signed)}]" if bounds else ""


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    """Cells arrive as HTML already escaped by the caller."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<div class='scroll'><table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def absent(text: str) -> str:
    return f"<p class='absent'>{text}</p>"


def figure(svg: str | None, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>" if svg else ""


def _asset(name: str) -> str:
    return resources.files("wpo.reporting").joinpath(name).read_text(encoding="utf-8")


def page(title: str, body: str, generated_at: datetime) -> str:
    """The shell: inline style and script, a policy that forbids every request, and no favicon fetch."""
    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    policy = (
        f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
        "base-uri 'none'; form-action 'none'"
    )
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{policy}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<link rel='icon' href='data:,'><title>{esc(title)}</title><style>{_asset('report.css')}</style></head>"
        f"<body>{body}<footer>Written by wpo {esc(_version())} on {esc(generated_at.isoformat(timespec='seconds'))}. "
        "One self-contained file: it makes no network request.</footer>"
        f"<script>{script}</script></body></html>\n"
    )


def _version() -> str:
    from wpo import __version__

    return __version__


# --- a run --------------------------------------------------------------------------------------------------------


def render_run(run: RunData, generated_at: datetime) -> str:
    name = run.directory.resolve().name
    nav = "".join(f"<a href='#{anchor}'>{label}</a>" for anchor, label in SECTIONS)
    rounds = len(run.rounds)
    header = (
        f"<header><h1>wpo report: {esc(name)}</h1><p class='muted'>{esc(run.directory)}"
        f"{f' · {rounds} rounds' if rounds > 1 else ''}</p><nav>{nav}</nav></header>"
    )
    body = [
        header,
        section("glance", "At a glance", glance(run)),
        section("pipeline", "Pipeline", pipeline(run)),
        section("data", "Data", per_round(run, data_part, "no sample, score or pair stage in this run directory")),
        section("training", "Training", per_round(run, training_part, "no training in this run directory")),
        section("evaluation", "Evaluation", per_round(run, evaluation_part, "no evaluation in this run directory")),
        section("export", "Export", per_round(run, export_part, "no export in this run directory")),
    ]
    return page(f"wpo report: {name}", "".join(body), generated_at)


def section(anchor: str, title: str, content: str) -> str:
    return f"<section id='{anchor}'><h2>{esc(title)}</h2>{content}</section>"


def per_round(run: RunData, part: Callable[[RoundData], str], nothing: str) -> str:
    """One part for every round that has it, titled by round when the run has several."""
    pieces = [(round_, part(round_)) for round_ in run.rounds]
    pieces = [(round_, html_) for round_, html_ in pieces if html_]
    if not pieces:
        return absent(esc(nothing))
    if len(run.rounds) == 1:
        return pieces[0][1]
    return "".join(
        f"<h3>Round {round_.number} <span class='muted'>({esc(round_.directory)})</span></h3>{html_}"
        for round_, html_ in pieces
    )


# --- at a glance --------------------------------------------------------------------------------------------------


def glance(run: RunData) -> str:
    evaluation = next((r.evaluation for r in run.rounds if r.evaluation), None)
    last_trained = next((r for r in reversed(run.rounds) if r.training), None)
    cards = [
        verdict_card(evaluation) if evaluation else "",
        measures_card(evaluation) if evaluation else "",
        judge_card(evaluation) if evaluation else "",
        outputs_card(evaluation) if evaluation else "",
        contamination_card(evaluation) if evaluation else "",
        *(data_card(r.pairs, r.number if len(run.rounds) > 1 else None) for r in run.rounds if r.pairs),
        training_card(last_trained) if last_trained else "",
    ]
    shown = "".join(cards)
    return f"<div class='cards'>{shown}</div>" if shown else absent("No stage has written anything to show yet.")


def card(title: str, content: str, css: str = "") -> str:
    return f"<div class='card {css}'><h3>{esc(title)}</h3>{content}</div>"


def verdict_card(evaluation: EvalData) -> str:
    metrics = evaluation.metrics
    if "better" not in metrics:
        return ""
    failed = [(name, check) for name, check in metrics.get("verdict", {}).items() if not check["passed"]]
    lines = "".join(
        f"<li>{esc(name)}: {esc(check['rule'])} — got {number(check['value'])}</li>" for name, check in failed
    )
    if metrics["better"]:
        return card("Better than the base?", "<p class='verdict good'>Yes: every rule holds.</p>", "good")
    return card("Better than the base?", f"<p class='verdict bad'>No. Failed:</p><ul>{lines}</ul>", "bad")


def direction(bounds: list[float]) -> tuple[str, str]:
    """Whether a delta's CI excludes zero, and which way: a fact about the interval, not a judgement."""
    if bounds[0] > 0:
        return "up", "↑"
    if bounds[1] < 0:
        return "down", "↓"
    return "flat", "≈"


def measures_card(evaluation: EvalData) -> str:
    metrics = evaluation.metrics
    names = [name for name in metrics.get("measures", []) if f"{name}_delta_ci95" in metrics]
    if not names:
        return ""
    items = []
    for name in names:
        css, arrow = direction(metrics[f"{name}_delta_ci95"])
        items.append(
            f"<li class='{css}'><b>{arrow} {esc(name)}</b> {number(metrics[f'{name}_base'])} → "
            f"{number(metrics[f'{name}_trained'])}, Δ {number(metrics[f'{name}_delta'], True)} "
            f"{interval(metrics[f'{name}_delta_ci95'], True)}</li>"
        )
    return card("Base → trained (95% CI of the paired delta)", f"<ul class='plain'>{''.join(items)}</ul>")


def judge_card(evaluation: EvalData) -> str:
    metrics = evaluation.metrics
    if "win_rate" not in metrics:
        return ""
    against = evaluation.judged_against or metrics.get("reference_generator") or "the baseline"
    return card(
        f"Judged against {against}",
        f"<p>win rate <b>{number(metrics['win_rate'])}</b> ± {number(metrics.get('standard_error'))} (SE); "
        f"length-controlled <b>{number(metrics.get('length_controlled_winrate'))}</b></p>"
        f"<p>won {number(metrics.get('n_wins'))} and drew {number(metrics.get('n_draws'))} of "
        f"{number(metrics.get('n_total'))} prompts; judge: {esc(metrics.get('judge', '—'))}</p>"
        f"<p>{esc(judged_by(metrics))}</p>",
    )


def contamination_card(evaluation: EvalData) -> str:
    """Eval instructions the training saw: a non-zero count makes every figure above suspect."""
    found = evaluation.metrics.get("contamination")
    if not found:
        return ""
    if not found["contaminated"]:
        return card(
            "Contamination",
            f"<p>No eval instruction shares a {found['ngram']}-word sequence with the training data "
            f"({esc(', '.join(found['sources']) or 'none found')}).</p>",
        )
    items = "".join(
        f"<li>{esc(item['id'])}: <q>{esc(shorten(item['shared'], 160))}</q></li>" for item in found["instructions"][:10]
    )
    return card(
        f"Contamination: {found['contaminated']} eval instruction(s) seen in training",
        f"<p>{found['contaminated']} of {found['instructions_checked']} eval instructions share a "
        f"{found['ngram']}-word sequence with {esc(', '.join(found['sources']))}:</p><ul>{items}</ul>",
        "bad",
    )


def outputs_card(evaluation: EvalData) -> str:
    """Repeated answers are the quickest sign of a reward hacked by one string."""
    distinct = evaluation.total_prompts - sum(n - 1 for _, n in evaluation.repeated_outputs)
    content = f"<p>{number(distinct)} distinct answers to {number(evaluation.total_prompts)} held-out prompts.</p>"
    if evaluation.repeated_outputs:
        repeats = "".join(
            f"<li>{n}×: <q>{esc(shorten(text, 160))}</q></li>" for text, n in evaluation.repeated_outputs[:3]
        )
        content += f"<p>Given more than once:</p><ul>{repeats}</ul>"
    return card("The model's answers", content, "bad" if evaluation.repeated_outputs else "")


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shares(counts: Counter[str]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{esc(name)} {100 * n / total:.0f}%" for name, n in counts.most_common())


def data_card(pairs: PairStats, round_number: int | None) -> str:
    chosen = Counter[str]()
    rejected = Counter[str]()
    for (chosen_source, rejected_source), n in pairs.sources.items():
        chosen[chosen_source] += n
        rejected[rejected_source] += n
    longer = sum(c > r for c, r in zip(pairs.chosen_lengths, pairs.rejected_lengths, strict=True))
    lines = [
        f"{number(pairs.total)} pairs",
        f"chosen from: {shares(chosen)}",
        f"rejected from: {shares(rejected)}",
        f"mean margin {number(fmean(pairs.margins))}" if pairs.margins else "no scores in the pairs",
        f"chosen longer than rejected in {100 * longer / pairs.total:.0f}% of pairs "
        f"(mean {fmean(pairs.chosen_lengths):.0f} vs {fmean(pairs.rejected_lengths):.0f} characters)",
    ]
    title = "The pairs" + (f", round {round_number}" if round_number else "")
    return card(title, "<ul class='plain'>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>")


def training_card(round_: RoundData) -> str:
    first, last = round_.training[0], round_.training[-1]
    lines = [f"{number(last['step'])} steps" + (f", round {round_.number}" if round_.number > 1 else "")]
    for key, label in (
        ("loss", "loss"),
        ("reward_accuracy", "reward accuracy"),
        ("reward_margin", "reward margin"),
        ("weight_mean", "mean WPO weight"),
    ):
        if key in first and key in last:
            lines.append(f"{label} {number(first[key])} → {number(last[key])}")
    listed = "".join(f"<li>{line}</li>" for line in lines)
    return card("Training (first → last step)", f"<ul class='plain'>{listed}</ul>")


# --- pipeline -----------------------------------------------------------------------------------------------------


def pipeline(run: RunData) -> str:
    rows = []
    for round_ in run.rounds:
        for stage in round_.stages:
            label = stage.name if round_.number == 1 else f"round-{round_.number}/{stage.name}"
            rows.append(stage_row(label, stage))
    headers = [
        "stage",
        "state",
        "wall time",
        "last <code>wpo run</code>",
        "config hash",
        "read",
        "written",
        "skipped / dropped by reason",
        "other counts",
    ]
    total = (run.summary or {}).get("total_wall_seconds")
    note = f"<p>Last <code>wpo run</code>: {seconds(total)} in all (summary.json).</p>" if total is not None else ""
    return note + table(headers, rows, "pipeline")


def stage_row(label: str, stage: StageStatus) -> list[str]:
    state = {
        "done": "done",
        "incomplete": "incomplete: no finished manifest (running, or stopped)",
        "absent": "did not run",
    }[stage.state]
    if stage.state != "done":
        return [esc(label), f"<span class='absent'>{state}</span>", *[""] * 7]
    manifest = stage.manifest or {}
    read_key, written_key = READ_WRITTEN_KEYS.get(stage.name, (None, None))
    reasons = "; ".join(
        f"{esc(kind)}: " + (", ".join(f"{esc(reason)} {number(n)}" for reason, n in counts.items()) or "none")
        for kind, counts in stage.by_reason.items()
    )
    other = "<br>".join(f"{esc(key)}: {compact(value)}" for key, value in stage.other_counts.items())
    return [
        esc(label),
        state,
        seconds(manifest.get("wall_seconds")),
        last_run(stage.last_run),
        f"<code>{esc(manifest.get('config_hash', '—'))}</code>",
        number(stage.count(read_key)),
        number(stage.count(written_key)),
        reasons,
        other,
    ]


def last_run(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    return "skipped (done before)" if entry.get("skipped") else f"ran, {seconds(entry.get('wall_seconds'))}"


def compact(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"<code>{esc(json.dumps(value, ensure_ascii=False))}</code>" if value else "—"
    return number(value)


# --- data ---------------------------------------------------------------------------------------------------------


def data_part(round_: RoundData) -> str:
    if not (round_.candidates or round_.pairs):
        return ""
    parts = [
        figure(
            charts.data_chart(round_.candidates, round_.pairs),
            "Histograms over every candidate and every pair (not only those in the browser below). "
            "Lengths in characters.",
        )
    ]
    if round_.candidates:
        parts.append(candidates_table(round_.candidates, round_.pairs, round_.directory))
    if round_.pairs:
        parts.append(sources_table(round_.pairs))
        parts.append(pair_browser(round_.pairs, round_.number))
    else:
        parts.append(absent("No pairs in this round (the pair stage did not run)."))
    return "".join(parts)


def candidates_table(stats: CandidateStats, pairs: PairStats | None, directory: Path) -> str:
    chosen = Counter[str]()
    rejected = Counter[str]()
    for (chosen_source, rejected_source), n in (pairs.sources if pairs else Counter()).items():
        chosen[chosen_source] += n
        rejected[rejected_source] += n
    rows = []
    for source, count in sorted(stats.count_by_source.items()):
        scores = stats.scores_by_source.get(source, [])
        rows.append(
            [
                esc(source),
                number(count),
                number(len(scores)),
                number(sum(scores) / len(scores)) if scores else "—",
                number(chosen[source]),
                number(rejected[source]),
            ]
        )
    caption = (
        f"<p>{number(stats.prompts)} prompts in <code>{esc(stats.path.relative_to(directory))}</code>"
        f"{f'; {number(stats.unscored)} candidates have no score' if stats.unscored else ''}.</p>"
    )
    return caption + table(["source", "candidates", "scored", "mean score", "chosen", "rejected"], rows)


def sources_table(pairs: PairStats) -> str:
    """Chosen source × rejected source: how often the policy beat, or lost to, each off-policy source."""
    chosen_sources = sorted({c for c, _ in pairs.sources})
    rejected_sources = sorted({r for _, r in pairs.sources})
    rows = [[f"chosen: {esc(c)}", *(number(pairs.sources[c, r]) for r in rejected_sources)] for c in chosen_sources]
    return "<h4>Pairs by source</h4>" + table(["", *(f"rejected: {esc(r)}" for r in rejected_sources)], rows)


def pair_browser(pairs: PairStats, round_number: int) -> str:
    data_id = f"pairs-{round_number}"
    sources = sorted({s for key in pairs.sources for s in key})
    options = "<option value=''>any</option>" + "".join(f"<option>{esc(s)}</option>" for s in sources)
    shown = len(pairs.items)
    notice = (
        f"<p class='cap-notice'>The browser holds the first {number(shown)} of the {number(pairs.total)} pairs in "
        f"<code>pair/pairs.jsonl</code> (the cap; <code>wpo report --max-items N</code> changes it). The counts and "
        "charts above use every pair.</p>"
        if shown < pairs.total
        else ""
    )
    return (
        f"<h4>Pair browser</h4>{notice}"
        f"<div class='browser' data-kind='pairs' data-items='{data_id}' data-page-size='{PAIRS_PER_PAGE}'>"
        f"<script type='application/json' id='{data_id}'>{script_json({'items': pairs.items})}</script>"
        "<div class='controls'>"
        f"<label>chosen from <select data-filter='source_chosen'>{options}</select></label>"
        f"<label>rejected from <select data-filter='source_rejected'>{options}</select></label>"
        "<label>margin ≥ <input type='number' step='any' data-filter='margin_min'></label>"
        "<label>margin ≤ <input type='number' step='any' data-filter='margin_max'></label>"
        "<label>search <input type='search' data-filter='text' placeholder='id, prompt or answer'></label>"
        "</div>"
        f"{pager('top')}<div class='items'></div>{pager('bottom')}"
        "<noscript><p class='absent'>The pair browser needs JavaScript.</p></noscript></div>"
    )


def pager(position: str) -> str:
    return (
        f"<div class='pager' data-position='{position}'>"
        "<button type='button' data-page='prev'>‹ previous</button>"
        "<span class='status' aria-live='polite'></span>"
        "<button type='button' data-page='next'>next ›</button></div>"
    )


# --- training -----------------------------------------------------------------------------------------------------


def training_part(round_: RoundData) -> str:
    rows = round_.training
    if not rows:
        train = next(stage for stage in round_.stages if stage.name == "train")
        return absent("Training ran, but logged no metrics.") if train.state == "done" else ""
    keys = [key for key in TRAINING_HEADLINE if any(key in row for row in rows)]
    table_rows = [[number(row["step"]), *(number(row.get(key)) for key in keys)] for row in rows]
    return (
        figure(
            charts.training_chart(rows),
            "Per logged optimizer step, from <code>train/metrics.jsonl</code>: "
            "each row is that step's own values, not a window average.",
        )
        + f"<details><summary>Every logged step ({number(len(rows))})</summary>"
        + table(["step", *(esc(k) for k in keys)], table_rows, "numbers")
        + "</details>"
    )


# --- evaluation ---------------------------------------------------------------------------------------------------


def evaluation_part(round_: RoundData) -> str:
    evaluation = round_.evaluation
    if evaluation is None:
        return ""
    metrics = evaluation.metrics
    headline = [
        [esc(key), number(metrics[key]) if key != "lc_formula" else f"<code>{esc(metrics[key])}</code>"]
        for key in EVAL_HEADLINE
        if key in metrics
    ]
    if "standard_error" in metrics and "win_rate" in metrics:
        spread = 1.96 * metrics["standard_error"]
        headline.insert(
            1, ["win rate 95% CI (± 1.96 SE)", interval([metrics["win_rate"] - spread, metrics["win_rate"] + spread])]
        )
    parts = [
        f"<p>The model ({esc(evaluation.generator or '—')}) judged against "
        f"{esc(evaluation.judged_against or '—')}.</p>",
        table(["figure", "value"], headline),
    ]
    names = [name for name in metrics.get("measures", []) if f"{name}_delta" in metrics]
    if names:
        rows = [
            [
                esc(name),
                number(metrics[f"{name}_base"]),
                interval(metrics.get(f"{name}_base_ci95")),
                number(metrics[f"{name}_trained"]),
                interval(metrics.get(f"{name}_trained_ci95")),
                number(metrics[f"{name}_delta"], True),
                interval(metrics.get(f"{name}_delta_ci95"), True),
                number(metrics.get(f"{name}_n")),
            ]
            for name in names
        ]
        parts.append("<h4>Held-out measures: base vs trained</h4>")
        parts.append(
            table(
                ["measure", "base", "95% CI", "trained", "95% CI", "delta", "95% CI (paired)", "prompts"],
                rows,
                "numbers",
            )
        )
        parts.append(figure(charts.eval_chart(metrics, names), "Means with percentile-bootstrap 95% CIs."))
    if "verdict" in metrics:
        rows = [
            [esc(name), esc(check["rule"]), number(check["value"]), "passed" if check["passed"] else "<b>failed</b>"]
            for name, check in metrics["verdict"].items()
        ]
        parts.append(f"<h4>Verdict: {'better' if metrics.get('better') else 'not better'} than the base</h4>")
        parts.append(table(["rule", "what", "value", ""], rows))
    parts.append(prompt_browser(evaluation, round_.number))
    return "".join(parts)


def prompt_browser(evaluation: EvalData, round_number: int) -> str:
    if not evaluation.total_prompts:
        return absent("No per-prompt answers (no measures.jsonl or annotations.json).")
    data_id = f"prompts-{round_number}"
    sorts = "<option value=''>as listed</option>" + "".join(
        f"<option value='delta:{esc(name)}:desc'>largest {esc(name)} gain first</option>"
        f"<option value='delta:{esc(name)}:asc'>largest {esc(name)} loss first</option>"
        for name in evaluation.measures
    )
    if any(item["preference"] is not None for item in evaluation.items):
        sorts += "<option value='preference::desc'>judge prefers the model most</option>"
        sorts += "<option value='preference::asc'>judge prefers the model least</option>"
    order = (
        f"The three by <code>side_by_side.md</code>'s fixed rule (the largest {esc(evaluation.highlight_measure)}"
        " gain, the median, the largest loss) come first, then file order."
        if evaluation.highlight_measure
        else "In file order."
    )
    fallback = (
        ""
        if evaluation.measures
        else (
            " This evaluation has no per-prompt measures (no base-model answers): "
            "the baseline beside the model is the judge's."
        )
    )
    notice = (
        f"<p class='cap-notice'>The browser holds {number(len(evaluation.items))} of the "
        f"{number(evaluation.total_prompts)} prompts (the cap).</p>"
        if len(evaluation.items) < evaluation.total_prompts
        else ""
    )
    payload = {
        "baseline": evaluation.baseline_generator or "baseline",
        "model": evaluation.generator or "model",
        "measures": evaluation.measures,
        "items": evaluation.items,
    }
    return (
        f"<h4>Every held-out prompt, side by side</h4><p>From <code>eval/{esc(evaluation.items_from)}</code>. "
        f"{order}{fallback}</p>{notice}"
        f"<div class='browser' data-kind='prompts' data-items='{data_id}' data-page-size='{PROMPTS_PER_PAGE}'>"
        f"<script type='application/json' id='{data_id}'>{script_json(payload)}</script>"
        "<div class='controls'>"
        f"<label>order <select data-sort=''>{sorts}</select></label>"
        "<label>search <input type='search' data-filter='text' placeholder='id, prompt or answer'></label>"
        "</div>"
        f"{pager('top')}<div class='items'></div>{pager('bottom')}"
        "<noscript><p class='absent'>The prompt browser needs JavaScript.</p></noscript></div>"
    )


# --- export -------------------------------------------------------------------------------------------------------


def export_part(round_: RoundData) -> str:
    export = round_.export
    if export is None:
        return ""
    rows = [
        [
            f"<code>{esc(entry.get('file', '—'))}</code>",
            esc(entry.get("type", "—")),
            f"{entry['size_bytes'] / 1e6:.1f} MB" if "size_bytes" in entry else "—",
            number(entry.get("perplexity")),
            number(entry.get("hf_perplexity")),
            number(entry.get("kl_mean")),
            number(entry.get("kl_max")),
            esc(shorten(entry.get("sample_answer", ""), 200)),
        ]
        for entry in export.files
    ]
    parts = [
        f"<p>Model <b>{esc(export.model or '—')}</b>, from <code>export/quantization_report.json</code>.</p>",
        table(["file", "type", "size", "perplexity", "HF perplexity", "mean KL", "max KL", "sample answer"], rows)
        if rows
        else absent("No GGUF file was recorded (no quantization_report.json)."),
    ]
    if export.card is not None:
        parts.append(
            f"<h4>Model card (<code>export/README.md</code>)</h4><pre class='card-text'>{esc(export.card)}</pre>"
        )
    else:
        parts.append(absent("No model card (export/README.md)."))
    return "".join(parts)


# --- a sweep ------------------------------------------------------------------------------------------------------


def link(target: Path, base: Path, text: str) -> str:
    """A relative link (it survives moving the sweep directory), each path component URL-quoted."""
    relative = target.relative_to(base)
    return f"<a href='{esc('/'.join(quote(part) for part in relative.parts))}'>{esc(text)}</a>"


def csv_cell(value: str) -> str:
    """A CSV field as the page shows figures (4 significant digits); text stays as it is."""
    try:
        return number(float(value)) if value.strip() else ""
    except ValueError:
        return esc(value)


def render_sweep(sweep: SweepData, report_name: str, generated_at: datetime) -> str:
    name = sweep.directory.resolve().parent.name + "/" + sweep.directory.name
    headers = ["report", "data", *(esc(column) for column in (sweep.runs[0].row if sweep.runs else {}))]
    rows = []
    for run in sweep.runs:
        report = link(run.directory / report_name, sweep.directory, run.name) if run.directory else esc(run.name)
        data = (
            link(run.data_directory / report_name, sweep.directory, run.data_directory.name)
            if run.data_directory
            else "—"
        )
        rows.append([report, data, *(csv_cell(value) for value in run.row.values())])
    comparison = (
        table(
            [esc(c) for c in sweep.comparison_columns],
            [[csv_cell(row[c]) for c in sweep.comparison_columns] for row in sweep.comparison],
            "numbers",
        )
        if sweep.comparison
        else absent("No comparison.csv.")
    )
    plot = (
        f"<figure><img alt='each measure minus the baseline, per variant, with its 95% CI' "
        f"src='data:image/png;base64,{base64.b64encode(sweep.plot_png).decode()}'>"
        "<figcaption>comparison.png: each measure's difference from the baseline variant, paired by seed and "
        "prompt, with its stratified-bootstrap 95% CI.</figcaption></figure>"
        if sweep.plot_png
        else absent("No comparison.png.")
    )
    data_links = ", ".join(link(d / report_name, sweep.directory, d.name) for d in sweep.data_directories)
    body = (
        f"<header><h1>wpo sweep: {esc(name)}</h1><p class='muted'>{esc(sweep.directory)} · "
        f"{number(len(sweep.runs))} runs; grid: {esc(', '.join(sweep.grid_keys) or '—')}</p></header>"
        f"<section id='comparison'><h2>Comparison</h2>{plot}{comparison}</section>"
        f"<section id='runs'><h2>Runs</h2><p>Each run's own report, and the report of the data directory whose pairs "
        f"it trained on (shared data: {data_links or 'none'}).</p>{table(headers, rows, 'numbers')}</section>"
    )
    return page(f"wpo sweep: {name}", body, generated_at)
