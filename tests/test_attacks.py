"""The adaptive attackers of failure injection (client/attacks.py) as pure functions on tiny
arrays, with their config keys: what each sends, that an attacker who knows
strategy.reject_norm_ratio slips under it, that one who knows strategy.min_cosine_to_median
slips over it, and that bad values stop naming the key."""

from __future__ import annotations

import numpy as np
import pytest

from client.attacks import (
    attack,
    attack_cosine,
    attack_scale,
    bias_direction,
    corrupting,
    disguise_push,
    evade_scale,
)
from client.faults import _check_colluders
from common import config as config_mod
from common.errors import ConfigError
from common.update_stats import outliers, update_statistics

pytestmark = pytest.mark.unit

SENT = {"w": np.array([1.0, 1.0], np.float32), "n": np.array(5, np.int64)}
GOT = {"w": np.array([2.0, 3.0], np.float32), "n": np.array(7, np.int64)}  # update [1, 2]


def exp(**overrides: object) -> config_mod.ExperimentConfig:
    return config_mod.load(None, {"data.num_sites": 5, **overrides})


def test_flip_and_scale_move_the_update_around_the_sent_model_and_leave_integers() -> None:
    flipped = attack("flip", SENT, GOT, 2.0)
    assert flipped["w"].tolist() == [-1.0, -3.0]  # 1 - 2*1, 1 - 2*2
    assert flipped["w"].dtype == np.float32 and flipped["n"] == 7
    assert attack("scale", SENT, GOT, 3.0)["w"].tolist() == [4.0, 7.0]  # 1 + 3*1, 1 + 3*2


def test_bias_adds_a_push_of_scale_times_the_update_norm_along_the_direction() -> None:
    sent = {"w": np.zeros(4)}
    got = {"w": np.array([3.0, 4.0, 0.0, 0.0])}  # update norm 5
    direction = {"w": np.full(4, 0.5)}  # unit norm
    assert attack("bias", sent, got, 0.2, direction)["w"].tolist() == [3.5, 4.5, 0.5, 0.5]  # push 0.2*5 = 1


def test_the_bias_direction_is_unit_norm_fixed_by_the_seed_and_covers_floats_only() -> None:
    ref = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(2), "n": np.zeros((), np.int64)}
    d = bias_direction(ref, 7)
    assert set(d) == {"a", "b"}
    assert np.sqrt(sum(float(np.sum(v**2)) for v in d.values())) == pytest.approx(1.0)
    assert all(np.allclose(np.abs(v), 1 / np.sqrt(8)) for v in d.values())  # 8 floats, equal magnitudes
    again, other = bias_direction(ref, 7), bias_direction(ref, 8)
    assert all(np.array_equal(d[k], again[k]) for k in d)
    assert not all(np.array_equal(d[k], other[k]) for k in d)


def test_evade_aims_just_under_the_norm_rule_else_uses_corrupt_scale() -> None:
    assert evade_scale(exp(**{"strategy.reject_norm_ratio": 3.0})) == pytest.approx(2.85)
    assert evade_scale(exp(**{"faults.corrupt_scale": 4.0})) == 4.0  # no rule: as configured
    assert evade_scale(exp(**{"strategy.reject_norm_ratio": 20.0})) == 10.0  # never above corrupt_scale
    assert attack_scale(exp(**{"faults.corrupt": "flip", "strategy.reject_norm_ratio": 3.0})) == 10.0


def test_an_evading_flip_passes_the_norm_rule_where_a_plain_flip_is_rejected() -> None:
    """Four honest updates of norm 1; the attacker's own honest update is one of them. Flipped x10
    it is 10x the median norm (rejected at reject_norm_ratio 3); scaled by evade_scale it is 2.85x
    (accepted): the weakness the norm bound closes."""
    ref = {"w": np.zeros(2)}
    honest = {f"h{i}": {"w": np.array(v)} for i, v in enumerate([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])}
    own = honest["h0"]
    ratio = 3.0
    for scale, rejected in ((10.0, True), (evade_scale(exp(**{"strategy.reject_norm_ratio": ratio})), False)):
        updates = {**honest, "bad": attack("evade", ref, own, scale)}
        stats = update_statistics(ref, updates)
        assert stats["bad"]["update_norm_ratio"] == pytest.approx(scale)
        assert ("bad" in outliers(stats, ratio)) is rejected


def test_the_disguise_push_gives_the_cosine_asked_for() -> None:
    """g solves (g rho - 1) / sqrt(1 - 2 g rho + g^2) = c. Worked by hand: c = 0 needs g rho = 1;
    rho 0.8, c 0.5: g = (0.8 * 0.75 + 0.5 * sqrt(0.75 * 0.36)) / (0.64 - 0.25) = 2.20464; c = -1
    is the plain flip (g = 0); c at or above rho is out of reach."""
    assert disguise_push(0.8, 0.0) == pytest.approx(1.25)
    assert disguise_push(0.8, 0.5) == pytest.approx(2.20464, abs=1e-5)
    assert disguise_push(0.8, -1.0) == pytest.approx(0.0)
    assert disguise_push(0.5, -0.5) == pytest.approx(1.0)  # c = -rho: g = 1 / (2 rho)
    assert disguise_push(0.8, 0.8) == float("inf")


def test_disguise_flips_the_large_coordinate_and_keeps_the_cosine_at_the_target() -> None:
    """Update u = [1, 2] (sent [1, 1], trained [2, 3]): rho = 3 / sqrt(10), and at cosine 0
    v = -u + (5 / 3) [1, 1] = [2/3, -1/3], scaled to norm 1 x ||u|| = sqrt(5): [2, -1], sent as
    [3, 0]. The large coordinate is flipped, the small one honest; cosine to u exactly 0. At
    cosine -1 it is the flip; at a cosine above rho it sends the sign pattern [1, 1] at norm sqrt(5)."""
    sent = attack("disguise", SENT, GOT, 1.0, cosine=0.0)
    assert np.allclose(sent["w"], [3.0, 0.0]) and sent["w"].dtype == np.float32 and sent["n"] == 7
    assert np.allclose(attack("disguise", SENT, GOT, 2.0, cosine=-1.0)["w"], [-1.0, -3.0])
    assert np.allclose(attack("disguise", SENT, GOT, 1.0, cosine=0.99)["w"], 1 + np.sqrt(2.5))
    v = attack("disguise", {"w": np.zeros(3)}, {"w": np.array([0.5, -3.0, 1.0])}, 4.0, cosine=0.3)["w"]
    u = np.array([0.5, -3.0, 1.0])
    assert float(v @ u) / (np.linalg.norm(v) * np.linalg.norm(u)) == pytest.approx(0.3)
    assert np.linalg.norm(v) == pytest.approx(4.0 * np.linalg.norm(u))
    assert v[1] > 0  # the largest coordinate, -3, flipped


def test_a_disguised_flip_passes_the_direction_rule_where_a_plain_flip_is_rejected() -> None:
    """Four honest sites send the same update as the attacker's own honest one, so the
    coordinate-wise median of the round is that update: the flip has cosine -1 to it (rejected at
    min_cosine_to_median 0), the disguised flip the cosine it aimed at, 0.1 (accepted)."""
    ref = {"w": np.zeros(4)}
    own = {"w": np.array([0.2, -1.0, 0.5, 2.0])}
    honest = {f"h{i}": {"w": own["w"].copy()} for i in range(4)}
    e = exp(**{"strategy.min_cosine_to_median": 0.0, "strategy.norm_bound": "median"})
    assert attack_cosine(e) == pytest.approx(0.1)
    for kind, rejected in (("flip", True), ("disguise", False)):
        updates = {**honest, "bad": attack(kind, ref, own, 1.0, cosine=attack_cosine(e))}
        stats = update_statistics(ref, updates)
        assert ("bad" in outliers(stats, 0.0, 0.0)) is rejected
    assert stats["bad"]["update_cosine_to_median"] == pytest.approx(0.1)
    assert attack_cosine(exp()) == -1.0  # no direction rule: the plain flip


def test_colluding_sites_are_the_count_from_corrupt_site() -> None:
    e = exp(**{"faults.corrupt_site": 1, "faults.corrupt_count": 2})
    assert [corrupting(e, s) for s in range(5)] == [False, True, True, False, False]
    assert not any(corrupting(exp(), s) for s in range(5))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"faults.corrupt_count": 0}, "faults.corrupt_count"),
        ({"faults.corrupt_scale": 0.0}, "faults.corrupt_scale"),
        ({"faults.corrupt": "sneaky"}, "faults.corrupt"),
        ({"strategy.norm_bound": "mean"}, "strategy.norm_bound"),
        ({"strategy.min_cosine_to_median": 1.0}, "strategy.min_cosine_to_median"),
    ],
)
def test_bad_values_stop_naming_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        exp(**overrides)


def test_colluders_beyond_the_last_site_stop_naming_the_key() -> None:
    _check_colluders(exp(**{"faults.corrupt_site": 3, "faults.corrupt_count": 2}))  # sites 3, 4 of 5
    with pytest.raises(ConfigError, match=r"faults\.corrupt_count.*reaches site 5.*data\.num_sites=5"):
        _check_colluders(exp(**{"faults.corrupt_site": 4, "faults.corrupt_count": 2}))


def run_fault_mod(e: config_mod.ExperimentConfig, site: int) -> tuple[dict[str, np.ndarray], float]:
    """One training message through client/faults.py's mod at partition ``site``, the site's own
    training replaced by a function that returns the sent model plus [1, 2] (every site the same)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.app.message.message import make_message
    from flwr.app.metadata import Metadata

    from client.faults import fault_mod

    def meta(kind: str) -> Metadata:
        return Metadata(run_id=1, message_id=kind, src_node_id=0, dst_node_id=site + 1, reply_to_message_id="",
                        group_id="1", created_at=0.0, ttl=60, message_type=kind)  # fmt: skip

    sent = RecordDict({"arrays": ArrayRecord({"w": Array(SENT["w"])}), "config": ConfigRecord({"server-round": 1})})
    msg = make_message(meta("train"), content=sent)

    def train(m: Message, context: Context) -> Message:
        trained = ArrayRecord({"w": Array(GOT["w"])})
        return make_message(meta("train"), content=RecordDict({"arrays": trained, "metrics": MetricRecord({})}))

    context = Context(run_id=1, node_id=site + 1, node_config={"partition-id": site, "num-partitions": 5},
                      state=RecordDict(), run_config={})  # fmt: skip
    reply = fault_mod(e)(msg, context, train)
    return {k: v.numpy() for k, v in reply.content["arrays"].items()}, reply.content["metrics"]["fault_injected"]


def test_the_fault_mod_sends_the_evading_flip_from_every_colluding_site_and_marks_it() -> None:
    """Sites 1 and 2 collude with 'evade' under reject_norm_ratio 3: each sends its update [1, 2]
    flipped x2.85 around the sent model [1, 1], i.e. [1 - 2.85, 1 - 5.7]; site 0 sends what it trained."""
    e = exp(**{"faults.corrupt_site": 1, "faults.corrupt_count": 2, "faults.corrupt": "evade",
               "strategy.reject_norm_ratio": 3.0})  # fmt: skip
    for site in (1, 2):
        sent, injected = run_fault_mod(e, site)
        assert np.allclose(sent["w"], [-1.85, -4.7]) and injected == 1.0
    sent, injected = run_fault_mod(e, 0)
    assert sent["w"].tolist() == [2.0, 3.0] and injected == 0.0


def test_the_fault_mod_sends_the_disguised_flip_under_both_rules() -> None:
    """Site 0 attacks with 'disguise' under reject_norm_ratio 3 and min_cosine_to_median -0.1: it
    aims at cosine 0, i.e. [2, -1] / sqrt(5) (see the hand-worked case above), at 2.85 x its norm
    sqrt(5): [5.7, -2.85] around the sent [1, 1]."""
    e = exp(**{"faults.corrupt_site": 0, "faults.corrupt": "disguise", "strategy.reject_norm_ratio": 3.0,
               "strategy.min_cosine_to_median": -0.1})  # fmt: skip
    sent, injected = run_fault_mod(e, 0)
    assert np.allclose(sent["w"], [6.7, -1.85]) and injected == 1.0
