"""What the WPO weights did, in figures: a batch's effective sample size, clamped share and mean weight per pair kind
against hand-worked weights; the run's ledger pair by pair; the rows as the trackers get them."""

from __future__ import annotations

import json

import pytest

from wpo.training.metrics import WeightLedger, effective_sample_size, tracker_scalars, weight_figures
from wpo.training.tokenize import TokenizedPair

HYBRID = "offpolicy:reference vs policy"
ON_POLICY = "policy vs policy"


def pair(pair_id: str, source_chosen: str | None = "policy", source_rejected: str | None = "policy") -> TokenizedPair:
    return TokenizedPair(pair_id, [1], [2], [3], source_chosen=source_chosen, source_rejected=source_rejected)


def test_a_batchs_weight_figures_hand_worked():
    """Weights 1, 0.5 (reference answer chosen over a sample), 0.5, 0 (two samples); only the first at the clamp.

    Σw = 2, Σw² = 1 + 0.25 + 0.25 + 0 = 1.5, so ESS = 2² / 1.5 = 8/3 ≈ 2.667 of 4 pairs: a share of 2/3.
    Clamped: 1 of 4 = 0.25. Mean by kind: reference vs policy (1 + 0.5) / 2 = 0.75; policy vs policy (0.5 + 0) / 2
    = 0.25.
    """
    figures = weight_figures([1.0, 0.5, 0.5, 0.0], [True, False, False, False], [HYBRID, HYBRID, ON_POLICY, ON_POLICY])
    assert figures == {
        "weight_ess": pytest.approx(8 / 3),
        "weight_ess_share": pytest.approx(2 / 3),
        "weight_clamped_share": 0.25,
        "weight_mean_by_source": {HYBRID: 0.75, ON_POLICY: 0.25},
    }


def test_effective_sample_size_at_its_bounds():
    """Equal weights: every pair counts, ESS = n (any scale). One pair with all the weight: ESS = 1. No weight: 0."""
    assert effective_sample_size([0.3] * 5) == pytest.approx(5.0)
    assert effective_sample_size([0.0, 0.9, 0.0]) == pytest.approx(1.0)
    assert effective_sample_size([0.0] * 3) == 0.0


def test_the_ledger_keeps_each_pairs_first_and_last_visit_and_the_runs_totals():
    """Step 1 visits a (reference vs policy, weight 1, clamped, margin 0) and b (policy vs policy, 0.5, margin 0);
    step 2 visits a again (0.25, margin 0.5) and c (source unknown, 0.25, margin -0.5).

    Rows: a first 1/0 at step 1, last 0.25/0.5 at step 2, 2 visits; b once; c once, sources null.
    Totals over the 4 visits: Σw = 2, Σw² = 1 + 0.25 + 0.0625 + 0.0625 = 1.375, ESS = 4 / 1.375 = 32/11 ≈ 2.909, a
    share of 8/11 ≈ 0.727; per step, ESS shares (1.5² / 1.25) / 2 = 0.9 and 1 (equal weights), mean 0.95.
    Clamped 1 of 4; mean by kind: reference vs policy (1 + 0.25) / 2 = 0.625, policy vs policy 0.5, unknown 0.25.
    """
    a, b, c = pair("a", "offpolicy:reference"), pair("b"), pair("c", None, None)
    ledger = WeightLedger()
    ledger.record(1, [a, b], [1.0, 0.5], [True, False], [0.0, 0.0])
    resumed = WeightLedger(json.loads(json.dumps(ledger.state())))  # as a checkpoint saves and a resume reads it
    resumed.record(2, [a, c], [0.25, 0.25], [False, False], [0.5, -0.5])

    assert resumed.rows() == [
        {
            "id": "a",
            "source_chosen": "offpolicy:reference",
            "source_rejected": "policy",
            "weight_first": 1.0,
            "weight_last": 0.25,
            "margin_first": 0.0,
            "margin_last": 0.5,
            "step_first": 1,
            "step_last": 2,
            "visits": 2,
        },
        {
            "id": "b",
            "source_chosen": "policy",
            "source_rejected": "policy",
            "weight_first": 0.5,
            "weight_last": 0.5,
            "margin_first": 0.0,
            "margin_last": 0.0,
            "step_first": 1,
            "step_last": 1,
            "visits": 1,
        },
        {
            "id": "c",
            "source_chosen": None,
            "source_rejected": None,
            "weight_first": 0.25,
            "weight_last": 0.25,
            "margin_first": -0.5,
            "margin_last": -0.5,
            "step_first": 2,
            "step_last": 2,
            "visits": 1,
        },
    ]
    assert resumed.summary() == {
        "pair_visits": 4,
        "pairs_visited": 3,
        "weight_mean": 0.5,
        "weight_ess": pytest.approx(32 / 11),
        "weight_ess_share": pytest.approx(8 / 11),
        "weight_ess_share_step_mean": pytest.approx(0.95),
        "weight_clamped_share": 0.25,
        "weight_mean_by_source": {HYBRID: 0.625, ON_POLICY: 0.5, "unknown vs unknown": 0.25},
    }
    assert WeightLedger().summary() == {"pair_visits": 0}


def test_trackers_get_each_pair_kinds_mean_as_its_own_scalar():
    """TensorBoard refuses `:` and spaces in a tag (it would rename it and warn at every step)."""
    row = {"step": 3, "loss": 0.5, "pairs": 4, "weight_mean_by_source": {HYBRID: 0.75, ON_POLICY: 0.25}}
    assert tracker_scalars(row) == {
        "train/loss": 0.5,
        "train/pairs": 4,
        "train/weight_mean_by_source/offpolicy_reference_vs_policy": 0.75,
        "train/weight_mean_by_source/policy_vs_policy": 0.25,
    }
