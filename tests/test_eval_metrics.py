"""Win-rate metrics against hand-worked values; the LC win rate against an independent re-implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.optimize import minimize
from sklearn.model_selection import GroupKFold

from wpo.errors import DataError
from wpo.evaluation.metrics import (
    bootstrap_mean_ci,
    head_to_head,
    length_controlled_winrate,
    paired_comparison,
    summarize,
)


def test_head_to_head_hand_worked():
    """Preferences 2, 1, 1.5, 1.75 → soft wins 1, 0, 0.5, 0.75: mean 0.5625, sample sd sqrt(0.1719...)...

    sd = sqrt(((0.4375)² + (0.5625)² + (0.0625)² + (0.1875)²) / 3) = sqrt(0.546875 / 3) = 0.42696; SE = sd / 2.
    Rounded: 2, 1, draw, 2 → (2 + 0.5) / 4 = 62.5%. Wins (> 0.5): 2; base wins: 1; draws: 1.
    """
    out = head_to_head(np.array([2.0, 1.0, 1.5, 1.75]))
    assert out["win_rate"] == pytest.approx(56.25)
    assert out["standard_error"] == pytest.approx(math.sqrt(0.546875 / 3) / 2 * 100)
    assert out["discrete_win_rate"] == pytest.approx(62.5)
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (2, 1, 1, 4)
    legacy = head_to_head(np.array([0.0, 2.0]))  # alpaca_eval's old draw encoding
    assert legacy["win_rate"] == pytest.approx(75.0) and legacy["n_draws"] == 1


def independent_lc(prefs, ref_len, model_len):
    """The LC GLM restated: soft-label L1 logistic regression (liblinear's objective, solved with L-BFGS-B on w = u − v,
    u, v ≥ 0), C from np.logspace(-4, 4, 10) by 5-fold grouped CV on the soft log loss, then σ(w_model) averaged."""
    y = prefs - 1.0
    delta = ref_len - model_len
    x = np.stack([np.tanh(delta / delta.std(ddof=1)), np.ones_like(delta)], axis=1)

    def fit(features, targets, c):
        def objective(uv):
            w = uv[:2] - uv[2:]
            z = features @ w
            loss = targets * np.logaddexp(0, -z) + (1 - targets) * np.logaddexp(0, z)
            grad_w = features.T @ (1 / (1 + np.exp(-z)) - targets)
            return uv.sum() + c * loss.sum(), np.concatenate([1 + c * grad_w, 1 - c * grad_w])

        result = minimize(
            objective,
            np.zeros(4),
            jac=True,
            method="L-BFGS-B",
            bounds=[(0, None)] * 4,
            options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 10000},
        )
        return result.x[:2] - result.x[2:]

    def logloss(w, features, targets):
        p = np.clip(1 / (1 + np.exp(-(features @ w))), 1e-15, 1 - 1e-15)
        return -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p))

    folds = list(GroupKFold(n_splits=5).split(x, groups=np.arange(len(y))))
    cv = [np.mean([logloss(fit(x[tr], y[tr], c), x[te], y[te]) for tr, te in folds]) for c in np.logspace(-4, 4, 10)]
    w = fit(x, y, np.logspace(-4, 4, 10)[int(np.argmin(cv))])
    return 100 / (1 + np.exp(-w[1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lc_matches_an_independent_implementation(seed):
    """Random sets where the judge favours longer outputs and the model has a real edge."""
    rng = np.random.default_rng(seed)
    n = 120
    ref_len = rng.integers(200, 1500, n).astype(float)
    model_len = rng.integers(200, 3000, n).astype(float)
    logit = 0.4 + 1.5 * np.tanh((model_len - ref_len) / 800)
    prefs = 1 + np.clip(1 / (1 + np.exp(-logit)) + rng.normal(0, 0.15, n), 0, 1)
    ours = length_controlled_winrate(prefs, ref_len, model_len)
    assert ours["length_controlled_winrate"] == pytest.approx(independent_lc(prefs, ref_len, model_len), abs=0.05)
    assert ours["lc_formula"] == "tanh(std_delta_len) + not_gamed_baseline"
    # the judge's length bias inflates the raw win rate; controlling for length takes it back out
    assert ours["length_controlled_winrate"] < head_to_head(prefs)["win_rate"]


@pytest.mark.parametrize(("preference", "expected"), [(1.0, 0.0), (2.0, 100.0)])
def test_lc_of_comparisons_that_all_went_one_way_is_that_rate(preference, expected):
    """Lost (or won) every comparison, at every length: controlling for length leaves the rate where it is. The
    penalized fit (the independent implementation, C up to 1e4) tends there too; it must not be the prior, 50%."""
    prefs = np.full(6, preference)
    ref_len, model_len = np.arange(50.0, 110.0, 10.0), np.arange(100.0, 142.0, 7.0)
    out = length_controlled_winrate(prefs, ref_len, model_len)
    assert out["length_controlled_winrate"] == expected and out["glm_weights"] == {}
    assert independent_lc(prefs, ref_len, model_len) == pytest.approx(expected, abs=1.0)


def test_lc_with_instruction_difficulty_and_gamed_baselines():
    rng = np.random.default_rng(5)
    n = 80
    difficulty = rng.normal(0, 1, n)
    prefs = 1 + 1 / (1 + np.exp(-(0.5 - difficulty)))
    ref_len, model_len = rng.integers(100, 900, n), rng.integers(100, 900, n)
    out = length_controlled_winrate(prefs, ref_len, model_len, instruction_difficulty=difficulty)
    assert set(out["glm_weights"]) == {"tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline"}
    assert out["glm_weights"]["instruction_difficulty"] < 0 and out["lc_formula"].startswith("tanh(std_delta_len) + i")
    gamed = {
        "preference": rng.uniform(0, 1, 40),
        "std_delta_len": rng.normal(0, 1, 40),
        "instruction_difficulty": rng.normal(0, 1, 40),
        "not_gamed_baseline": np.zeros(40),
    }
    regularized = length_controlled_winrate(prefs, ref_len, model_len, difficulty, gamed)
    assert 0 < regularized["length_controlled_winrate"] < 100
    with pytest.raises(ValueError, match="needs instruction difficulties"):
        length_controlled_winrate(prefs, ref_len, model_len, None, gamed)


def test_summarize_reports_every_public_key():
    out = summarize(np.array([2.0, 1.0, 1.5]), ["aa", "bbbb", "c"], ["xxxx", "y", "zz"])
    assert out["avg_length"] == pytest.approx(7 / 3)
    for key in (
        "win_rate",
        "standard_error",
        "discrete_win_rate",
        "n_wins",
        "n_draws",
        "n_total",
        "avg_length",
        "length_controlled_winrate",
    ):
        assert key in out


def test_bootstrap_ci_against_hand_worked_cases_and_scipy():
    assert bootstrap_mean_ci(np.full(7, 0.25), seed=0) == [0.25, 0.25]  # no spread, no interval
    low, high = bootstrap_mean_ci(np.array([0.0, 1.0]), seed=0)  # resample means are 0, 0.5 or 1 (1/4, 1/2, 1/4)
    assert (low, high) == (0.0, 1.0)
    values = np.random.default_rng(3).normal(0.4, 1.0, 60)
    ours = bootstrap_mean_ci(values, seed=1)
    theirs = scipy_stats.bootstrap((values,), np.mean, method="percentile", n_resamples=10_000, random_state=1)
    assert ours == pytest.approx([theirs.confidence_interval.low, theirs.confidence_interval.high], abs=0.02)
    assert ours == bootstrap_mean_ci(values, seed=1)  # seeded: the same interval on every rerun
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean_ci(np.array([]), seed=0)


def test_paired_comparison_pairs_prompts():
    """A constant per-prompt gain has a zero-width delta interval, however much the prompts differ from each other."""
    base = np.array([0.0, 0.2, 0.9, 0.5])
    out = paired_comparison("reward", base, base + 0.1, seed=0)
    assert out["reward_base"] == pytest.approx(0.4) and out["reward_trained"] == pytest.approx(0.5)
    assert out["reward_delta"] == pytest.approx(0.1) and out["reward_delta_ci95"] == pytest.approx([0.1, 0.1])
    assert out["reward_base_ci95"][0] < 0.4 < out["reward_base_ci95"][1] and out["reward_n"] == 4
    with pytest.raises(ValueError, match="4 base values of reward for 3 trained"):
        paired_comparison("reward", base, base[:3], seed=0)


def test_lc_of_a_single_comparison_is_refused_with_a_message():
    with pytest.raises(
        DataError, match="the length-controlled win rate needs at least 2 comparisons to cross-validate, got 1"
    ):
        length_controlled_winrate(np.array([1.5]), np.array([10.0]), np.array([12.0]))
