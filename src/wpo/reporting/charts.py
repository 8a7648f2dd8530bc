"""The report's charts as inline SVG, drawn with matplotlib's object API (no pyplot: no global backend or figure
state, nothing left open). Text stays text (`svg.fonttype: none`), so the charts are small, sharp and searchable, and
the page needs no chart library and no font file."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from wpo.figures import PairedMeasure
from wpo.reporting.collect import CandidateStats, PairStats, PairWeights

PANEL_INCHES = (3.6, 2.6)
TRAINING_PANELS = (
    ("loss", ("loss",)),
    ("WPO weight: mean, min–max", ("weight_mean", "weight_min", "weight_max")),
    ("reward margin", ("reward_margin",)),
    ("reward accuracy", ("reward_accuracy",)),
    ("learning rate", ("learning_rate",)),
    ("gradient norm (before clipping)", ("grad_norm",)),
    ("WPO weights' effective sample size,\nshare of the step's pairs", ("weight_ess_share",)),
    ("share of WPO weights clamped at 1", ("weight_clamped_share",)),
)


def plain(label: str) -> str:
    """A label matplotlib prints as it is: `$` would start math text, a leading `_` hides a legend entry."""
    return label.replace("$", r"\$").lstrip("_") or "(blank)"


def _figure(panels: int, columns: int) -> tuple[Any, list[Any]]:
    """A figure with `panels` axes on a grid `columns` wide."""
    from matplotlib.figure import Figure

    rows = -(-panels // columns)
    figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def to_svg(figure: Any) -> str:
    """The `<svg>` element alone (no XML prolog or doctype: it goes inside HTML), reproducible byte for byte."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "wpo-report"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _histogram(axis: Any, series: dict[str, Sequence[float]], title: str, xlabel: str, stacked: bool) -> None:
    values = [v for part in series.values() for v in part]
    edges = np.histogram_bin_edges(values, bins=20) if values else np.linspace(0, 1, 21)
    labels = [plain(name) for name in series]
    axis.hist(
        list(series.values()),
        bins=edges,
        stacked=stacked,
        label=labels,
        alpha=1.0 if stacked else 0.55,
        histtype="barstacked" if stacked else "stepfilled",
    )
    axis.set_title(title, fontsize=10)
    axis.set_xlabel(xlabel, fontsize=9)
    axis.set_ylabel("count", fontsize=9)
    axis.legend(fontsize=7)


def data_chart(candidates: CandidateStats | None, pairs: PairStats | None) -> str | None:
    """Candidate scores by source; chosen vs rejected scores; margins; chosen vs rejected lengths."""
    panels: list[tuple[dict[str, Sequence[float]], str, str, bool]] = []
    if candidates and candidates.scores_by_source:
        panels.append(
            (dict(sorted(candidates.scores_by_source.items())), "every candidate's score, by source", "score", True)
        )
    if pairs and pairs.margins:
        panels.append(
            ({"chosen": pairs.chosen_scores, "rejected": pairs.rejected_scores}, "pair scores", "score", False)
        )
        panels.append(({"chosen − rejected": pairs.margins}, "pair margins", "score margin", False))
    if pairs and pairs.total:
        panels.append(
            (
                {"chosen": pairs.chosen_lengths, "rejected": pairs.rejected_lengths},
                "answer lengths",
                "characters",
                False,
            )
        )
    if not panels:
        return None
    figure, axes = _figure(len(panels), min(len(panels), 4))
    for axis, (series, title, xlabel, stacked) in zip(axes, panels, strict=True):
        _histogram(axis, series, title, xlabel, stacked)
    return to_svg(figure)


def training_chart(rows: list[dict[str, Any]]) -> str | None:
    """Loss, WPO weight (mean with its min–max band), reward margin and accuracy, learning rate, gradient norm per
    logged step; a metric the run did not log gets an empty panel that says so."""
    if not rows:
        return None
    steps = np.array([row["step"] for row in rows])

    def series(key: str) -> np.ndarray | None:
        values = [row.get(key) for row in rows]
        return None if any(v is None for v in values) else np.array(values, dtype=float)

    figure, axes = _figure(len(TRAINING_PANELS), 4)
    for axis, (title, keys) in zip(axes, TRAINING_PANELS, strict=True):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step", fontsize=9)
        main = series(keys[0])
        if main is None:
            axis.text(0.5, 0.5, f"{keys[0]} not logged", ha="center", va="center", transform=axis.transAxes)
            continue
        axis.plot(steps, main, marker="o" if len(rows) < 40 else None, markersize=3)
        if keys[0].endswith("_share"):  # a share on its whole range: 0.99 against 1 is no swing
            axis.set_ylim(-0.02, 1.02)
        band = [series(key) for key in keys[1:]]
        if len(band) == 2 and band[0] is not None and band[1] is not None:
            axis.fill_between(steps, band[0], band[1], alpha=0.25, linewidth=0)
    return to_svg(figure)


def weights_chart(rows: list[dict[str, Any]], weights: PairWeights | None) -> str | None:
    """The mean WPO weight of each pair kind per logged step, and every pair's weight at its first and last visit."""
    kinds = sorted({kind for row in rows for kind in row.get("weight_mean_by_source", {})})
    if not kinds and weights is None:
        return None
    figure, axes = _figure(int(bool(kinds)) + int(weights is not None), 2)
    if kinds:
        axis = axes.pop(0)
        for kind in kinds:
            logged = [
                (row["step"], row["weight_mean_by_source"][kind])
                for row in rows
                if kind in row.get("weight_mean_by_source", {})
            ]
            steps, means = zip(*logged, strict=True)
            axis.plot(steps, means, marker="o" if len(logged) < 40 else None, markersize=3, label=plain(kind))
        axis.set_title("mean WPO weight by pair kind (chosen vs rejected)", fontsize=10)
        axis.set_xlabel("step", fontsize=9)
        axis.legend(fontsize=7)
    if weights is not None:
        series = {
            "first visit": [row["weight_first"] for row in weights.rows],
            "last visit": [row["weight_last"] for row in weights.rows],
        }
        _histogram(axes[0], series, "every pair's WPO weight", "weight", stacked=False)
    return to_svg(figure)


def eval_chart(measures: list[PairedMeasure]) -> str | None:
    """Per held-out measure: the base's and the trained model's means with their 95% CIs."""
    shown = [m for m in measures if m.base.ci95 is not None and m.trained.ci95 is not None and m.delta.ci95]
    if not shown:
        return None
    figure, axes = _figure(len(shown), min(len(shown), 5))
    for axis, measure in zip(axes, shown, strict=True):
        centers = [measure.base.mean, measure.trained.mean]
        intervals = [measure.base.ci95, measure.trained.ci95]
        errors = [
            [c - low for c, (low, _) in zip(centers, intervals, strict=True)],
            [high - c for c, (_, high) in zip(centers, intervals, strict=True)],
        ]
        axis.errorbar([0, 1], centers, yerr=errors, fmt="o", capsize=5)
        axis.set_xticks([0, 1], ["base", "trained"])
        axis.set_xlim(-0.5, 1.5)
        low, high = measure.delta.ci95
        axis.set_title(f"{plain(measure.name)}\nΔ {measure.delta.mean:+.3g} [{low:+.3g}, {high:+.3g}]", fontsize=9)
    return to_svg(figure)
