"""server/central_dp.py: site-level DP whose noise covers what the aggregate really is.

Expected values are built by hand from the inputs (not by calling the code under test twice):
- three sites with 1000/10/10 records and clipped updates +C/-C/-C aggregate to (C-C-C)/3 (equal
  weights; record-count weighting gave +0.48 for C = 0.5), and a larger update is clipped to C;
- with 2 of 3 sites answering, the clipped updates are summed and divided by 3 (the sites the round
  was sent to), and the noise on the aggregate has standard deviation sigma*C/3, measured;
- with client-side clipping, an update above the clipping norm is rejected as malformed;
- every contributing site gets one (sigma, 1, 1) entry per round in the coordinator's ledger, and a
  second run sharing the ledger reports the composition of both runs (checked with dp_accounting).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from common import config as config_mod
from server import central_dp
from server.central_dp import CentralDP
from server.recorder import RoundRecorder
from server.strategy import build_strategy

pytestmark = pytest.mark.unit

C = 0.5


def reply(node: int, site: str, w: np.ndarray, records: int):
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=node, dst_node_id=0, reply_to_message_id="x",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict(
        {
            "metrics": MetricRecord({"weight": float(records), "num-examples": float(records)}),
            "site": ConfigRecord({"name": site}),
            "arrays": ArrayRecord({"w": Array(np.asarray(w, np.float32))}),
        }
    )
    return make_message(meta, content=content)


def central(
    tmp_path: Path, sigma: float, dim: int = 1, run: str = "r1", **kw: object
) -> tuple[CentralDP, RoundRecorder]:
    exp = config_mod.load(
        None,
        {
            "privacy.mode": "central",
            "privacy.noise_multiplier": sigma,
            "privacy.clipping_norm": C,
            "privacy.central_ledger": str(tmp_path / "central.json"),
            "data.num_sites": 3,
            "strategy.min_sites": 1,
            **kw,
        },
    )
    recorder = RoundRecorder(None)
    strategy = build_strategy(exp, {"w": np.zeros(dim, np.float32)}, recorder, run)
    assert isinstance(strategy, CentralDP)
    strategy.current_arrays = ArrayRecord({"w": Array(np.zeros(dim, np.float32))})
    strategy.sent = 3  # what configure_train records: the round went to 3 sites
    recorder.begin(1, bytes_down=0)
    return strategy, recorder


def test_large_site_does_not_outweigh_the_noise(tmp_path: Path) -> None:
    dp, _ = central(tmp_path, sigma=1e-9)
    arrays, _ = dp.aggregate_train(1, [reply(1, "big", [+C], 1000), reply(2, "s1", [-C], 10), reply(3, "s2", [-C], 10)])
    assert float(arrays["w"].numpy()[0]) == pytest.approx((C - C - C) / 3, abs=1e-6)  # not +0.48
    dp2, _ = central(tmp_path / "b", sigma=1e-9)
    arrays, _ = dp2.aggregate_train(
        1, [reply(1, "big", [+50.0], 1000), reply(2, "s1", [-C], 10), reply(3, "s2", [-C], 10)]
    )
    assert float(arrays["w"].numpy()[0]) == pytest.approx((C - C - C) / 3, abs=1e-6)  # +50 clipped to +C


def test_lost_site_shrinks_the_step_not_the_noise(tmp_path: Path) -> None:
    dp, recorder = central(tmp_path, sigma=1e-9)
    arrays, _ = dp.aggregate_train(1, [reply(1, "a", [+C], 10), reply(2, "b", [+C], 10)])
    assert float(arrays["w"].numpy()[0]) == pytest.approx(2 * C / 3, abs=1e-6)  # sum / 3 sites sent
    assert dp.last == (2, 3)
    dim = 40_000
    dp, _ = central(tmp_path / "noise", sigma=1.0, dim=dim)
    zeros = np.zeros(dim, np.float32)
    arrays, _ = dp.aggregate_train(1, [reply(1, "a", zeros, 10), reply(2, "b", zeros, 10)])
    noise = arrays["w"].numpy().astype(np.float64)
    expected = 1.0 * C / 3  # sigma * C / m with m = 3 sites sent, whatever number answered
    assert abs(noise.std() - expected) / expected < 5 / np.sqrt(2 * dim)  # 5 standard errors of a sample std
    assert abs(noise.mean()) < 5 * expected / np.sqrt(dim)
    entries = dp.ledger.ledger.entries
    assert sorted(e["site"] for e in entries) == ["a", "b"]
    assert all((e["noise_multiplier"], e["sample_rate"], e["steps"], e["status"]) == (1.0, 1.0, 1, "committed")
               for e in entries)  # fmt: skip


def test_integer_buffers_are_neither_aggregated_nor_noised(tmp_path: Path) -> None:
    """BatchNorm's num_batches_tracked counts a site's steps: it keeps the global model's value."""
    keys = {"privacy.mode": "central", "privacy.noise_multiplier": 1.0, "strategy.min_sites": 1}
    exp = config_mod.load(None, {**keys, "privacy.central_ledger": str(tmp_path / "c.json")})
    ref = {"w": np.zeros(3, np.float32), "n": np.array(4, np.int64)}
    recorder = RoundRecorder(None)
    dp = build_strategy(exp, ref, recorder, "r")
    dp.current_arrays, dp.sent = ArrayRecord({k: Array(v) for k, v in ref.items()}), 3
    recorder.begin(1, bytes_down=0)
    replies = []
    for node, steps in ((1, 9), (2, 30)):
        msg = reply(node, f"s{node}", np.zeros(3), 10)
        msg.content["arrays"] = ArrayRecord({"w": Array(np.zeros(3, np.float32)), "n": Array(np.array(4 + steps))})
        replies.append(msg)
    arrays, _ = dp.aggregate_train(1, replies)
    assert arrays["n"].numpy().dtype == np.int64 and int(arrays["n"].numpy()) == 4
    assert arrays["w"].numpy().dtype == np.float32 and np.abs(arrays["w"].numpy()).max() > 0  # noised


def test_client_side_clipping_is_verified(tmp_path: Path) -> None:
    dp, recorder = central(tmp_path, sigma=1e-9, **{"privacy.clip_side": "client"})
    arrays, _ = dp.aggregate_train(1, [reply(1, "honest", [+C], 10), reply(2, "unclipped", [+3 * C], 10)])
    assert [f["site"] for f in recorder.current.failures] == ["unclipped"]
    assert "above the clipping norm" in recorder.current.failures[0]["reason"]
    assert float(arrays["w"].numpy()[0]) == pytest.approx(C / 3, abs=1e-6)


def test_site_level_epsilon_is_cumulative_across_runs(tmp_path: Path) -> None:
    dp_accounting = pytest.importorskip("dp_accounting")
    sigma, rounds = 2.0, 3
    for run in ("r1", "r2"):
        dp, recorder = central(tmp_path, sigma=sigma, run=run)
        for rnd in range(1, rounds + 1):
            recorder.begin(rnd, bytes_down=0)
            dp.aggregate_train(rnd, [reply(1, "a", [0.0], 10), reply(2, "b", [0.0], 10), reply(3, "c", [0.0], 10)])
    record = dp.ledger.as_record("r2", rounds)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(sigma), 2 * rounds)  # both runs, no amplification
    expected = acc.get_epsilon(1e-5)
    assert record["delta"] == 1e-5
    assert record["epsilon"] == pytest.approx(expected, rel=0.02)
    one_run = dp_accounting.rdp.RdpAccountant()
    one_run.compose(dp_accounting.GaussianDpEvent(sigma), rounds)
    assert record["sites"]["a"]["epsilon_run"] == pytest.approx(one_run.get_epsilon(1e-5), rel=0.02)


def test_server_optimizer_steps_from_the_noised_mean_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FedAvgM under central DP: the momentum is built from the noised mean (what the DP release
    is), never from the clean one. With sigma = 1 the noise on one coordinate is ~C/3; the momentum
    after round 1 equals -(noised mean - x0) exactly, and the new model x0 - lr * momentum."""
    dp, _ = central(tmp_path, sigma=1.0, dim=4, **{"strategy.name": "fedavgm", "strategy.server_lr": 0.5})
    dp.base.global_arrays = {"w": np.zeros(4, np.float32)}
    dp.base.flower.current_arrays = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    released: list[np.ndarray] = []
    add_noise = central_dp._noised

    def spy(arrays: ArrayRecord, current: dict, std: float) -> ArrayRecord:
        out = add_noise(arrays, current, std)
        released.append(out["w"].numpy().copy())
        return out

    monkeypatch.setattr(central_dp, "_noised", spy)
    clean = np.array([0.1, 0.1, 0.1, 0.1], np.float32)  # every site sends the same small update
    arrays, _ = dp.aggregate_train(1, [reply(i, f"s{i}", clean, 10) for i in (1, 2, 3)])
    (noised,) = released
    assert np.abs(noised - clean).max() > 1e-3  # noise was really added (sigma*C/3 ~ 0.17)
    assert np.allclose(dp.base.server_state()["momentum/w"], -noised)  # pseudo-gradient of the release
    assert np.allclose(arrays["w"].numpy(), 0.5 * noised, atol=1e-6)
