"""common/update_stats.py: the coordinator's per-update statistics and its norm and direction
rules, checked against values worked out by hand on tiny updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.update_stats import clip_factors, outliers, update_statistics

pytestmark = pytest.mark.unit

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


def test_the_direction_rule_flags_updates_pointing_away_from_the_median() -> None:
    """Same updates as above: cosines 0.8, 0.8, -0.8. min_cosine 0 flags c alone, naming the key;
    0.9 flags all three; -1 (off) none. The norm rule's reason wins where both apply."""
    stats = update_statistics(GLOBAL, {"a": site((3, 0), 4), "b": site((0, 3), 4), "c": site((-30, 0), -40)})
    flagged = outliers(stats, 0.0, 0.0)
    assert list(flagged) == ["c"] and "-0.80, below strategy.min_cosine_to_median=0" in flagged["c"]
    assert sorted(outliers(stats, 0.0, 0.9)) == ["a", "b", "c"]
    assert outliers(stats, 0.0, -1.0) == {}
    assert "reject_norm_ratio" in outliers(stats, 3.0, 0.0)["c"]


def test_buffers_named_in_skip_are_left_out() -> None:
    stats = update_statistics(GLOBAL, {"a": site((3, 0), 4)}, skip={"b"})
    assert stats["a"]["update_norm"] == pytest.approx(3.0)
    assert math.isclose(stats["a"]["update_cosine_to_median"], 1.0)


def test_statistics_of_clipped_updates_by_hand() -> None:
    """Central DP clips every update to C before the coordinator keeps any statistic of it.
    With C = 1 the updates a = (3, 0, 4), b = (0, 3, 4), c = (-30, 0, -40) become (0.6, 0, 0.8),
    (0, 0.6, 0.8), (-0.6, 0, -0.8): norms 1, 1, 1 (ratios 1), median update (0, 0, 0.8), cosines
    0.64/0.8 = 0.8, 0.8, -0.8. With C = 10 only c is clipped, to (-6, 0, -8): norms 5, 5, 10, ratio
    of c 10/5 = 2, median update (0, 0, 4), cosine of c -32/(10*4) = -0.8."""
    updates = {"a": site((3, 0), 4), "b": site((0, 3), 4), "c": site((-30, 0), -40)}
    tight = update_statistics(GLOBAL, updates, clip_norm=1.0)
    for name, cosine in (("a", 0.8), ("b", 0.8), ("c", -0.8)):
        assert tight[name]["update_norm"] == pytest.approx(1.0)
        assert tight[name]["update_norm_ratio"] == pytest.approx(1.0)
        assert tight[name]["update_cosine_to_median"] == pytest.approx(cosine)
    loose = update_statistics(GLOBAL, updates, clip_norm=10.0)
    assert [loose[n]["update_norm"] for n in "abc"] == pytest.approx([5.0, 5.0, 10.0])
    assert loose["c"]["update_norm_ratio"] == pytest.approx(2.0)
    assert loose["c"]["update_cosine_to_median"] == pytest.approx(-0.8)
    assert outliers(tight, 3.0) == {}  # the clipped update is no outlier; its rejection names no raw norm


def test_clipping_counts_every_floating_tensor_the_mechanism_clips() -> None:
    """The clip factor is the one central DP applies, over every floating-point tensor (float
    buffers too), even where the statistics leave a buffer out: a = (3, 0 | 4) has norm 5, so with
    C = 1 its weight part (3, 0) is scaled by 1/5 to (0.6, 0), norm 0.6."""
    stats = update_statistics(GLOBAL, {"a": site((3, 0), 4)}, skip={"b"}, clip_norm=1.0)
    assert stats["a"]["update_norm"] == pytest.approx(0.6)
    assert clip_factors(GLOBAL, {"a": site((3, 0), 4), "z": site((0, 0), 0)}, 1.0) == pytest.approx(
        {"a": 0.2, "z": 1.0}
    )
