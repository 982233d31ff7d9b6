"""Norm bounding (strategy.norm_bound: median, server/norm_bound.py): each accepted update is scaled
down to the round's median update norm before the strategy aggregates it, the statistics record
the update as it arrived, it composes with reject_norm_ratio and min_cosine_to_median, and both
are refused where the coordinator cannot or must not read single updates (secure aggregation,
central DP)."""

from __future__ import annotations

import numpy as np
import pytest

from common import config as config_mod
from common.errors import ConfigError
from server.norm_bound import bound_factors, bounded
from server.recorder import RoundRecorder
from server.strategy import build_strategy
from tests.test_strategy import REF, reply

pytestmark = pytest.mark.unit


def test_factors_bring_norms_above_the_median_down_to_it() -> None:
    assert bound_factors({"a": 1.0, "b": 2.0, "c": 4.0}) == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert bound_factors({"a": 0.0, "b": 2.0}) == {"a": 1.0, "b": 0.5}  # median 1; a zero update stays
    assert bound_factors({}) == {}


def test_bounded_scales_the_update_around_the_reference_in_the_same_dtype() -> None:
    ref = {"w": np.array([1.0, 1.0]), "n": np.array(5)}
    out = bounded(ref, {"w": np.array([5.0, 1.0], np.float32), "n": np.array(7)}, 0.5, ["w"])
    assert out["w"].tolist() == [3.0, 1.0] and out["w"].dtype == np.float32  # 1 + 0.5*(5-1)
    assert out["n"] == 7


def strategy(**overrides: object):  # noqa: ANN201
    recorder = RoundRecorder(None)
    exp = config_mod.load(None, {"strategy.min_sites": 1, "data.num_sites": 3, **overrides})
    s = build_strategy(exp, REF, recorder)
    recorder.begin(1, bytes_down=0)
    return s, recorder


def updates() -> list:
    """Around the zero model: a and b honest (every entry 1 and 2: norms 2 and 4), c a flip at
    norm 60 (entries -30); equal weights."""
    def w(v: float) -> dict:
        return {"w": np.full((2, 2), v, np.float32), "n": np.array(3, np.int64)}

    metrics = {"weight": 1, "num-examples": 1, "train_seconds": 1.0}
    return [reply(1, "a", w(1.0), metrics), reply(2, "b", w(2.0), metrics), reply(3, "c", w(-30.0), metrics)]


def test_fedavg_with_the_median_bound_averages_the_bounded_updates() -> None:
    """Median norm 4: c is scaled by 4/60 to entries -2, so the mean is (1 + 2 - 2) / 3; unbounded
    it would be (1 + 2 - 30) / 3 = -9."""
    plain, _ = strategy()
    arrays, _ = plain.aggregate_train(1, updates())
    assert np.allclose(arrays["w"].numpy(), -9.0)
    s, recorder = strategy(**{"strategy.norm_bound": "median"})
    arrays, _ = s.aggregate_train(1, updates())
    assert np.allclose(arrays["w"].numpy(), 1 / 3)
    trained = recorder.current.train
    assert trained["c"]["update_norm"] == pytest.approx(60.0)  # as it arrived
    assert trained["c"]["update_bound_factor"] == pytest.approx(4 / 60)
    assert trained["a"]["update_bound_factor"] == 1.0


def test_the_bound_composes_with_the_norm_rule() -> None:
    """reject_norm_ratio 3 excludes c (15x the median); a and b are at or under the median: (1 + 2) / 2."""
    s, recorder = strategy(**{"strategy.norm_bound": "median", "strategy.reject_norm_ratio": 3.0})
    arrays, _ = s.aggregate_train(1, updates())
    assert np.allclose(arrays["w"].numpy(), 1.5)
    assert [f["site"] for f in recorder.current.failures] == ["c"]


def test_the_bound_composes_with_the_direction_rule() -> None:
    """The coordinate-wise median update is 1 everywhere: a and b have cosine 1, c -1, so
    min_cosine_to_median 0 excludes c, naming the rule; the bound leaves a and b: (1 + 2) / 2."""
    s, recorder = strategy(**{"strategy.norm_bound": "median", "strategy.min_cosine_to_median": 0.0})
    arrays, _ = s.aggregate_train(1, updates())
    assert np.allclose(arrays["w"].numpy(), 1.5)
    assert [(f["site"], "min_cosine_to_median=0" in f["reason"]) for f in recorder.current.failures] == [("c", True)]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"secagg.enabled": True, "strategy.min_sites": 2}, "under secagg.enabled"),
        ({"privacy.mode": "central", "privacy.noise_multiplier": 1.0}, "privacy.mode 'central'"),
    ],
)
@pytest.mark.parametrize(("rule", "value"), [("norm_bound", "median"), ("min_cosine_to_median", 0.0)])
def test_refused_where_the_coordinator_does_not_read_single_updates(
    overrides: dict, says: str, rule: str, value: object
) -> None:
    exp = config_mod.load(None, {"strategy.min_sites": 1, "data.num_sites": 3, f"strategy.{rule}": value,
                                 **overrides})  # fmt: skip
    with pytest.raises(ConfigError, match=rf"strategy\.{rule}.*{says}"):
        build_strategy(exp, REF, RoundRecorder(None))
