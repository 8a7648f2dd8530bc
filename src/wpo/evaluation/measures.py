"""Held-out measures of base vs trained answers, per prompt, with paired bootstrap CIs and a verdict.

A gain counts only when it shows on measures the training did not optimize, so beside the task reward
(`eval.reward`) every comparison with the base model reports:
- the recipe's own measures (`eval.measures`, `name: module:function(messages, text[, record]) -> float`), e.g. the format
  constraint's strict accuracy;
- `chrf`: content against the prompt's reference answer (`eval.reference_field`), sacrebleu's sentence chrF (0–100);
- `length_chars`: answer length in characters;
- `distinct_2`: distinct word bigrams / all bigrams (1 = no repetition).

"Better" (`better` in the metrics) needs all of: reward and every recipe measure up, with the delta's CI above zero;
chrF not worse by more than `eval.content_margin` points (the CI's low end above minus the margin: non-inferiority);
mean length at least `eval.min_length_ratio` × the base's; distinct-2 not down by more than `eval.repetition_margin`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from wpo.data.schemas import PromptRecord
from wpo.errors import WpoError
from wpo.evaluation.metrics import paired_comparison
from wpo.figures import MeasureRow, paired_measures
from wpo.user_functions import UserFunction, prompt_record

BUILTIN_MEASURES = ("chrf", "length_chars", "distinct_2")


def distinct_2(text: str) -> float:
    """Distinct word bigrams over all word bigrams, lowercased (1.0 for texts under two words)."""
    words = [w.lower() for w in re.findall(r"\b\w+\b", text)]
    bigrams = list(zip(words, words[1:], strict=False))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


def chrf(text: str, reference: str) -> float:
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(text, [reference]).score)


def per_prompt_values(
    functions: dict[str, UserFunction], prompt: PromptRecord, text: str, reference: str | None
) -> dict[str, float]:
    """Every measure of one answer: the recipe's functions (`name -> (messages, text[, record])`), then the
    built-ins."""
    values = {}
    where = prompt.id
    record = prompt_record(prompt.id, prompt.messages, prompt.extra)
    for name, function in functions.items():
        try:
            value = function(prompt.messages, text, record=record)
        except Exception as exc:  # the user's code: say which measure broke on which prompt, not a bare traceback
            raise WpoError(f"eval measure {name} failed on the prompt {where!r}: {type(exc).__name__}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise WpoError(f"eval measure {name} gave {value!r} for the prompt {where!r}; expected a finite number")
        values[name] = float(value)
    if reference is not None:
        values["chrf"] = chrf(text, reference)
    values["length_chars"] = float(len(text))
    values["distinct_2"] = distinct_2(text)
    return values


def compare(rows: list[dict[str, Any]], names: list[str], seed: int) -> dict[str, Any]:
    """Paired comparison of every measure over the per-prompt rows (`<name>_base`, `<name>_trained`)."""
    metrics: dict[str, Any] = {"measures": names}
    for name in names:
        base_field, trained_field = MeasureRow.fields(name)
        base = np.array([row[base_field] for row in rows])
        trained = np.array([row[trained_field] for row in rows])
        metrics.update(paired_comparison(name, base, trained, seed))
    return metrics


def verdict(
    metrics: dict[str, Any],
    gain_measures: list[str],
    content_margin: float,
    min_length_ratio: float,
    repetition_margin: float,
) -> dict[str, Any]:
    """Each rule of "better" with its figure and whether it held; `better` only when every rule holds."""
    checks: dict[str, dict[str, Any]] = {}
    measures = {measure.name: measure for measure in paired_measures(metrics)}
    for name in gain_measures:
        low = measures[name].delta.ci95[0]
        checks[f"{name}_up"] = {"rule": f"{name} delta CI above 0", "value": low, "passed": low > 0}
    if "chrf" in measures:
        low = measures["chrf"].delta.ci95[0]
        checks["content_not_worse"] = {
            "rule": f"chrF delta CI low end above -{content_margin:g}",
            "value": low,
            "passed": low > -content_margin,
        }
    ratio = measures["length_chars"].trained.mean / max(measures["length_chars"].base.mean, 1.0)
    checks["length_not_collapsed"] = {
        "rule": f"length ratio trained/base at least {min_length_ratio:g}",
        "value": ratio,
        "passed": ratio >= min_length_ratio,
    }
    low = measures["distinct_2"].delta.ci95[0]
    checks["repetition_not_worse"] = {
        "rule": f"distinct-2 delta CI low end above -{repetition_margin:g}",
        "value": low,
        "passed": low > -repetition_margin,
    }
    return {"better": all(check["passed"] for check in checks.values()), "verdict": checks}


def highlights(rows: list[dict[str, Any]], name: str) -> list[tuple[str, dict[str, Any]]]:
    """Three prompts by a fixed rule, not picked by hand: the largest gain in `name`, the median, the largest loss
    (ties broken by file order)."""
    ranked = sorted(range(len(rows)), key=lambda i: (rows[i][f"{name}_trained"] - rows[i][f"{name}_base"], -i))
    picks = [("largest gain", ranked[-1]), ("median", ranked[len(ranked) // 2]), ("largest loss", ranked[0])]
    return [(label, rows[i]) for label, i in picks]


def _fenced(text: str) -> str:
    """A fence longer than any run of tildes in the text, so no answer can close it early."""
    fence = "~" * max(3, 1 + max((len(run) for run in re.findall(r"~+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def _cell(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3f}"


def side_by_side(
    rows: list[dict[str, Any]], names: list[str], base_generator: str, generator: str, highlight_measure: str
) -> str:
    """Markdown: every held-out prompt with the reference, the base's and the model's answers and their measures."""

    def section(row: dict[str, Any], label: str = "") -> list[str]:
        table = ["| measure | base | trained |", "|---|---:|---:|"]
        table += [f"| {n} | {_cell(row[f'{n}_base'])} | {_cell(row[f'{n}_trained'])} |" for n in names]
        parts = [f"### {row['id']}{f' ({label})' if label else ''}", "", "Prompt:", "", _fenced(row["prompt"]), ""]
        if row.get("reference") is not None:
            parts += ["Reference:", "", _fenced(row["reference"]), ""]
        parts += [
            f"Base ({base_generator}):",
            "",
            _fenced(row["base_output"]),
            "",
            f"Trained ({generator}):",
            "",
            _fenced(row["output"]),
            "",
            *table,
            "",
        ]
        return parts

    lines = [
        f"# Held-out answers: {generator} vs {base_generator}",
        "",
        f"{len(rows)} prompts. Measures per answer: {', '.join(names)}.",
        "",
        f"## Three by a fixed rule: the largest {highlight_measure} gain, the median, the largest loss",
        "",
    ]
    for label, row in highlights(rows, highlight_measure):
        lines += section(row, label)
    lines += ["## Every prompt, in file order", ""]
    for row in rows:
        lines += section(row)
    return "\n".join(lines)
