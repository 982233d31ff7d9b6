"""common/update_stats.py: the coordinator's per-update statistics and its norm rule, checked
against values worked out by hand on tiny updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.update_stats import outliers, update_statistics

GLOBAL = {"w": np.array([1.0, 1.0], np.float32), "b": np.array([0.0], np.float32), "n": np.array(7, np.int64)}


def site(dw: tuple[float, float], db: float) -> dict[str, np.ndarray]:
    return {"w": GLOBAL["w"] + np.array(dw, np.float32), "b": np.array([db], np.float32), "n": np.array(9, np.int64)}


def test_norms_ratios_and_cosines_by_hand() -> None:
    """Updates (as (dw1, dw2, db)): a = (3, 0, 4), b = (0, 3, 4), c = -10 a (sign-flipped x10).
    Norms 5, 5, 50; median norm 5; coordinate-wise median update (0, 0, 4), so the cosines are
    a: 16/(5*4) = 0.8, b: 0.8, c: -160/(50*4) = -0.8. The integer tensor is not a weight."""
    stats = update_statistics(GLOBAL, {"a": site((3, 0), 4), "b": site((0, 3), 4), "c": site((-30, 0), -40)})
    want = {"a": (5, 1, 0.8), "b": (5, 1, 0.8), "c": (50, 10, -0.8)}
    for name, (norm, ratio, cosine) in want.items():
        assert stats[name]["update_norm"] == pytest.approx(norm)
        assert stats[name]["update_norm_ratio"] == pytest.approx(ratio)
        assert stats[name]["update_cosine_to_median"] == pytest.approx(cosine)
    flagged = outliers(stats, 3.0)
    assert list(flagged) == ["c"]
    assert "10.0x the median" in flagged["c"] and "strategy.reject_norm_ratio=3" in flagged["c"]
    assert outliers(stats, 0.0) == {} and outliers(stats, 11.0) == {}


def test_buffers_named_in_skip_are_left_out() -> None:
    stats = update_statistics(GLOBAL, {"a": site((3, 0), 4)}, skip={"b"})
    assert stats["a"]["update_norm"] == pytest.approx(3.0)
    assert math.isclose(stats["a"]["update_cosine_to_median"], 1.0)
