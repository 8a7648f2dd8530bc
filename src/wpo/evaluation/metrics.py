"""Win rates from pairwise preferences, and AlpacaEval 2's length-controlled win rate. Pure: arrays in, numbers out.

Preferences follow alpaca_eval: in [1, 2], 1 = the reference (output_1) is better, 2 = the model (output_2) is,
1.5 (or a legacy 0) a draw. `win_rate` is the mean of `preference - 1` in percent, `standard_error` its standard
error (ddof 1), `discrete_win_rate` counts rounded preferences with draws as half.

The length-controlled win rate fits a logistic GLM of the soft preference on `tanh(standardized length difference)`,
the instruction's difficulty (when the caller has AlpacaEval's per-instruction difficulties) and a model term, with
L1 regularization chosen by grouped 5-fold cross-validation; the LC win rate is the mean predicted preference with
the length term set to zero. Without difficulties (custom eval sets) the formula is `tanh(std_delta_len) + model`.
With AlpacaEval's gamed-baseline rows, they join the fit with weight λ/2 (λ = 0.2), as AlpacaEval regularizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wpo.errors import DataError
from wpo.figures import Estimate, PairedMeasure

C_GRID = np.logspace(-4, 4, 10)
FORMULA_WITH_DIFFICULTY = "tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline"
FORMULA_WITHOUT_DIFFICULTY = "tanh(std_delta_len) + not_gamed_baseline"


def head_to_head(preferences: np.ndarray) -> dict[str, float]:
    prefs = np.asarray(preferences, dtype=float)
    prefs = np.where(prefs == 0.0, 1.5, prefs)
    soft = prefs - 1.0
    discrete = np.where(prefs == 1.5, 0.5, np.round(prefs) - 1.0)
    n = len(soft)
    return {
        "win_rate": float(soft.mean() * 100),
        "standard_error": float(soft.std(ddof=1) / np.sqrt(n) * 100) if n > 1 else float("nan"),
        "discrete_win_rate": float(discrete.mean() * 100),
        "n_wins": int((soft > 0.5).sum()),
        "n_wins_base": int((soft < 0.5).sum()),
        "n_draws": int((prefs == 1.5).sum()),
        "n_total": n,
    }


def _soft_logloss(probabilities: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
    p = np.clip(probabilities, 1e-15, 1 - 1e-15)
    return float(-np.mean(weights * (targets * np.log(p) + (1 - targets) * np.log(1 - p))))


def _fit(features: np.ndarray, targets: np.ndarray, weights: np.ndarray, c: float) -> Any:
    """L1 logistic regression on soft targets: each row appears as a 1 (weight w·p) and a 0 (weight w·(1-p)).
    scikit-learn is imported here, not with the module: reading eval figures (the report, the sweep) needs no fit."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(
        C=c, l1_ratio=1.0, solver="liblinear", fit_intercept=False, random_state=123, max_iter=1000
    )
    doubled = np.concatenate([features, features])
    labels = np.concatenate([np.ones(len(targets)), np.zeros(len(targets))])
    sample_weight = np.concatenate([weights * targets, weights * (1 - targets)])
    return model.fit(doubled, labels, sample_weight=sample_weight)


def fit_glm(features: np.ndarray, targets: np.ndarray, weights: np.ndarray, n_splits: int = 5) -> np.ndarray:
    """Coefficients of the GLM, with C chosen by grouped K-fold CV on the weighted soft log loss."""
    if len(targets) < 2:
        raise DataError(
            f"the length-controlled win rate needs at least 2 comparisons to cross-validate, got {len(targets)}"
        )
    from sklearn.model_selection import GroupKFold

    folds = list(GroupKFold(n_splits=min(n_splits, len(targets))).split(features, groups=np.arange(len(targets))))
    losses = []
    for c in C_GRID:
        fold_losses = []
        for train, test in folds:
            model = _fit(features[train], targets[train], weights[train], c)
            fold_losses.append(_soft_logloss(model.predict_proba(features[test])[:, 1], targets[test], weights[test]))
        losses.append(np.mean(fold_losses))
    best = C_GRID[int(np.argmin(losses))]
    return _fit(features, targets, weights, best).coef_[0]


def length_controlled_winrate(
    preferences: np.ndarray,
    reference_lengths: np.ndarray,
    model_lengths: np.ndarray,
    instruction_difficulty: np.ndarray | None = None,
    gamed_rows: dict[str, np.ndarray] | None = None,
    regularize_to_baseline_lambda: float = 0.2,
) -> dict[str, object]:
    """LC win rate (percent), the GLM's weights and which formula was used.

    `gamed_rows` (AlpacaEval's gamed baselines) holds arrays `preference` (in [0, 1]), `std_delta_len`,
    `instruction_difficulty` and `not_gamed_baseline` (0/1), and needs `instruction_difficulty`.
    """
    prefs = np.asarray(preferences, dtype=float)
    targets = np.where(prefs == 0.0, 1.5, prefs) - 1.0
    delta = np.asarray(reference_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    spread = delta.std(ddof=1) if len(delta) > 1 else 0.0
    std_delta_len = delta / spread if spread > 0 else np.zeros_like(delta)
    columns = [np.tanh(std_delta_len)]
    if instruction_difficulty is not None:
        columns.append(np.asarray(instruction_difficulty, dtype=float))
    columns.append(np.ones_like(delta))
    features = np.stack(columns, axis=1)
    weights = np.ones_like(targets)
    if gamed_rows is not None:
        if instruction_difficulty is None:
            raise ValueError("the gamed-baseline regularization needs instruction difficulties")
        gamed = np.stack(
            [
                np.tanh(gamed_rows["std_delta_len"]),
                gamed_rows["instruction_difficulty"],
                gamed_rows["not_gamed_baseline"].astype(float),
            ],
            axis=1,
        )
        not_gamed = gamed_rows["not_gamed_baseline"].astype(bool)
        features = np.concatenate([gamed, features])
        targets = np.concatenate([np.asarray(gamed_rows["preference"], dtype=float), targets])
        weights = np.concatenate([np.where(not_gamed, 1.0, regularize_to_baseline_lambda / 2), weights])
    names = ["tanh(std_delta_len)"] + (["instruction_difficulty"] if instruction_difficulty is not None else [])
    formula = FORMULA_WITH_DIFFICULTY if instruction_difficulty is not None else FORMULA_WITHOUT_DIFFICULTY
    if gamed_rows is None and np.ptp(targets) == 0 and targets[0] in (0.0, 1.0):
        # every comparison went one way: the GLM's fit tends to that rate at every length, while liblinear, handed
        # one class only, returns zero weights and so the prior, 50%, even for a model that lost every comparison
        return {"length_controlled_winrate": float(targets[0] * 100), "glm_weights": {}, "lc_formula": formula}
    coefficients = fit_glm(features, targets, weights)
    test = features[-len(prefs) :].copy()
    test[:, 0] = 0.0  # no length difference
    predicted = 1.0 / (1.0 + np.exp(-(test @ coefficients)))
    return {
        "length_controlled_winrate": float(predicted.mean() * 100),
        "glm_weights": dict(zip([*names, "not_gamed_baseline"], map(float, coefficients), strict=True)),
        "lc_formula": formula,
    }


def summarize(
    preferences: np.ndarray,
    reference_outputs: list[str],
    model_outputs: list[str],
    instruction_difficulty: np.ndarray | None = None,
    gamed_rows: dict[str, np.ndarray] | None = None,
) -> dict[str, object]:
    """Every headline metric of an annotations set (docs/design.md's `wpo eval --json` keys, and the GLM's details)."""
    reference_lengths = np.array([len(text) for text in reference_outputs])
    model_lengths = np.array([len(text) for text in model_outputs])
    metrics: dict[str, object] = head_to_head(preferences)
    metrics["avg_length"] = float(model_lengths.mean())
    metrics.update(
        length_controlled_winrate(preferences, reference_lengths, model_lengths, instruction_difficulty, gamed_rows)
    )
    return metrics


def bootstrap_mean_ci(values: np.ndarray, seed: int, resamples: int = 10_000, level: float = 0.95) -> list[float]:
    """Percentile bootstrap confidence interval of the mean: resample the items with replacement `resamples` times."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return [float(low), float(high)]


def paired_comparison(name: str, base: np.ndarray, trained: np.ndarray, seed: int) -> dict[str, Any]:
    """Means of one measure on base and trained answers to the same prompts, with bootstrap 95% CIs
    (`<name>_base`, `<name>_trained`, `<name>_delta`, each with `_ci95`, and `<name>_n`).

    The delta's interval resamples prompts, keeping each prompt's two values together (a paired bootstrap), so
    prompt difficulty cancels out of the interval.
    """
    base, trained = np.asarray(base, dtype=float), np.asarray(trained, dtype=float)
    if base.shape != trained.shape:
        raise ValueError(f"{base.size} base values of {name} for {trained.size} trained ones")
    delta = trained - base

    def estimate(values: np.ndarray) -> Estimate:
        return Estimate(float(values.mean()), tuple(bootstrap_mean_ci(values, seed)))

    return PairedMeasure(name, estimate(base), estimate(trained), estimate(delta), int(base.size)).flat()
