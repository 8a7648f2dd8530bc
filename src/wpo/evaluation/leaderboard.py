"""A leaderboard CSV in alpaca_eval's columns, and a PNG/HTML report of one evaluation."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from wpo import pages
from wpo.data.io import atomic_writer

LC_WIN_RATE = "length_controlled_winrate"
LEADERBOARD_COLUMNS = [
    "win_rate",
    "standard_error",
    "n_wins",
    "n_wins_base",
    "n_draws",
    "n_total",
    "discrete_win_rate",
    "mode",
    "avg_length",
    "length_controlled_winrate",
    "lc_standard_error",
    "annotator",  # who judged: wpo's judge kind, or the alpaca_eval annotator
    "comparable_with_leaderboard",  # AlpacaEval 2's protocol exactly (eval.judge: alpaca_eval), else False
]


def update_leaderboard(path: Path, generator: str, metrics: dict[str, Any]) -> pd.DataFrame:
    """Insert or replace this generator's row; rows sorted by LC win rate, as alpaca_eval's leaderboards are."""
    row = {column: metrics.get(column) for column in LEADERBOARD_COLUMNS}
    row["mode"] = "wpo"
    protocol = metrics.get("alpaca_eval") or {}
    row["annotator"] = protocol.get("annotator") or metrics.get("judge")
    row["comparable_with_leaderboard"] = bool(protocol.get("comparable_with_leaderboard"))
    board = pd.read_csv(path, index_col=0) if path.is_file() else pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    board = board.drop(index=generator, errors="ignore")
    board.loc[generator] = row
    board = board.sort_values(LC_WIN_RATE, ascending=False)
    with atomic_writer(path) as handle:
        board.to_csv(handle, float_format="%.6f")
    return board


def _figure_png(board: pd.DataFrame, preferences: list[float], generator: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    # a row without a figure (a leaderboard written by another tool) is left out of the plot, not a crash
    length, win, controlled = (
        pd.to_numeric(board[c], errors="coerce") for c in ("avg_length", "win_rate", LC_WIN_RATE)
    )
    left.scatter(length, win, color="tab:blue", label="win rate")
    left.scatter(length, controlled, color="tab:orange", marker="x", label="LC win rate")
    for name, x, y in zip(board.index, length, win, strict=True):
        if pd.notna(x) and pd.notna(y):
            left.annotate(str(name), (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    left.set_xlabel("average output length (characters)")
    left.set_ylabel("% preferred over the reference")
    left.set_title("Leaderboard: win rate vs length")
    left.legend()
    right.hist(preferences, bins=20, range=(1.0, 2.0), color="tab:green")
    right.set_xlabel("preference (1 = reference better, 2 = model better)")
    right.set_ylabel("instructions")
    right.set_title(f"Per-instruction preferences: {generator}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_report(
    directory: Path, board: pd.DataFrame, metrics: dict[str, Any], annotations: list[dict[str, Any]], generator: str
) -> None:
    """`report.png` (the leaderboard's win rate against length, and the preferences) and `report.html` around it."""
    png = _figure_png(board, [a["preference"] for a in annotations], generator)
    with atomic_writer(directory / "report.png", "wb") as handle:
        handle.write(png)
    page = pages.render_page(
        pages.environment(__package__),
        "eval_page.html.j2",
        f"wpo eval: {generator}",
        datetime.now(UTC),
        generator=generator,
        metrics=metrics,
        png=png,
        columns=LEADERBOARD_COLUMNS,
        leaderboard=list(json.loads(board.to_json(orient="index")).items()),  # plain values, NaN as None
        annotations=annotations,
    )
    with atomic_writer(directory / "report.html") as handle:
        handle.write(page)
