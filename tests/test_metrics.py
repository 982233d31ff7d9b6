"""Metrics (common/metrics.py): ROC AUC of two-class tasks against hand-computed values, and the
site summary's privacy figures, which are the worst site's, never a mean."""

from __future__ import annotations

import numpy as np
import pytest

from common.metrics import binary_roc_auc, summarize_sites

pytestmark = pytest.mark.unit


def test_binary_roc_auc_of_four_scores_is_three_quarters() -> None:
    """Positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 (positive, negative) pairs the
    positive ranks higher in 3 (0.35 < 0.4 is the miss), so AUC = 3/4. The score is the
    probability of the second label (column 1)."""
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.stack([1 - p1, p1], axis=1)
    assert binary_roc_auc(np.array([0, 0, 1, 1]), probs) == pytest.approx(0.75)


def test_binary_roc_auc_counts_a_tie_as_half() -> None:
    """One positive and one negative with the same score: the single pair is a tie, AUC = 1/2."""
    probs = np.array([[0.3, 0.7], [0.3, 0.7]])
    assert binary_roc_auc(np.array([0, 1]), probs) == pytest.approx(0.5)


def test_binary_roc_auc_is_absent_for_one_class_or_three_labels() -> None:
    """None (not NaN) when the records hold one class only, or the task has more than two labels."""
    two = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert binary_roc_auc(np.array([1, 1]), two) is None
    three = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert binary_roc_auc(np.array([0, 1, 2]), three) is None


def test_site_summary_reports_the_largest_epsilon_not_a_weighted_mean() -> None:
    """Site a (weight 90) spent epsilon 1, site b (weight 10) epsilon 4: the weighted mean, 1.3,
    would claim a guarantee no site has; the summary's epsilon, epsilon_run and delta are b's
    (the maximum), its noise multiplier the smaller one; accuracy stays the weighted mean
    (0.9 * 0.8 + 0.1 * 0.4 = 0.76)."""
    summary = summarize_sites(
        {
            "a": {
                "weight": 90,
                "epsilon": 1.0,
                "epsilon_run": 0.5,
                "delta": 1e-5,
                "noise_multiplier": 1.2,
                "accuracy": 0.8,
            },
            "b": {
                "weight": 10,
                "epsilon": 4.0,
                "epsilon_run": 2.0,
                "delta": 1e-4,
                "noise_multiplier": 0.7,
                "accuracy": 0.4,
            },
        },
        weight_key="weight",
    )
    assert summary["epsilon"] == 4.0 and summary["epsilon_run"] == 2.0 and summary["delta"] == 1e-4
    assert summary["noise_multiplier"] == 0.7
    assert summary["accuracy"] == pytest.approx(0.76) and summary["weight"] == 100.0
