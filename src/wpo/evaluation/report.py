"""A leaderboard CSV in alpaca_eval's columns, and a PNG/HTML report of one evaluation."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import pandas as pd

from wpo.data.io import atomic_writer

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
    board = board.sort_values("length_controlled_winrate", ascending=False)
    with atomic_writer(path) as handle:
        board.to_csv(handle, float_format="%.6f")
    return board


def _figure_png(board: pd.DataFrame, preferences: list[float], generator: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.scatter(board["avg_length"], board["win_rate"], color="tab:blue", label="win rate")
    left.scatter(
        board["avg_length"], board["length_controlled_winrate"], color="tab:orange", marker="x", label="LC win rate"
    )
    for name, item in board.iterrows():
        left.annotate(
            str(name), (item["avg_length"], item["win_rate"]), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
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
    png = _figure_png(board, [a["preference"] for a in annotations], generator)
    with atomic_writer(directory / "report.png", "wb") as handle:
        handle.write(png)
    headline = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(metrics[key]))}</td></tr>"
        for key in (
            "length_controlled_winrate",
            "win_rate",
            "standard_error",
            "discrete_win_rate",
            "n_wins",
            "n_draws",
            "n_total",
            "avg_length",
            "lc_formula",
            "judge",
        )
        if key in metrics
    )
    rows = "".join(
        f"<tr><td>{html.escape(a['instruction'][:200])}</td><td>{a['preference']:.3f}</td>"
        f"<td>{len(a['output_2'])}</td><td>{len(a['output_1'])}</td></tr>"
        for a in annotations
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>wpo eval: {html.escape(generator)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}</style></head><body>"
        f"<h1>{html.escape(generator)} vs the reference</h1><table>{headline}</table>"
        f"<p><img alt='win rate vs length; preference histogram' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'></p><h2>Leaderboard</h2>{board.to_html(float_format='%.2f')}"
        "<h2>Per instruction</h2><table><tr><th>instruction</th><th>preference</th><th>model length</th>"
        f"<th>reference length</th></tr>{rows}</table></body></html>"
    )
    with atomic_writer(directory / "report.html") as handle:
        handle.write(page)
