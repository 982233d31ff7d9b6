"""Secure aggregation (server/secagg.py, client/secagg.py: Flower's SecAgg+ under Confide's loop),
in the in-process simulation with the same seeded site training as a plain run, so every site's
update is the same in both and the plain run shows what the secure one must equal:
- the coordinator's strategy never holds a site's update: in a secure round it is called once, with
  the mean of the sites' weights (which the test knows from the plain run's replies), and that
  differs from every single site's weights by far more than the quantisation error;
- the secure aggregate equals plain FedAvg's within SecAgg+'s quantisation error (bound computed by
  hand: one step 2*clip_range/quantization_range per site, averaged);
- a site that drops out after the key exchange (crashed while training, the protocol's masking
  stage) does not stop the round: its masks are rebuilt from the others' shares and the aggregate
  equals the plain mean over the two survivors;
- the configurations the coordinator cannot serve without seeing updates are refused by key.
The real-process, TLS version is tests/test_deploy.py (test_secure_aggregation_on_tls_supernodes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from common import config as config_mod
from common.errors import ConfideError, ConfigError
from server.secagg import SecureAggregation
from server.strategy import ConfideStrategy
from simulations.local import simulate
from simulations.study.determinism import seeded_sites

pytestmark = [pytest.mark.sim, pytest.mark.slow]

BASE = {
    "model.name": "resnet8",
    "data.num_sites": 3,
    "strategy.min_sites": 2,
    "strategy.rounds": 1,
    "strategy.fraction_evaluate": 0.0,
    "data.max_samples": 300,
    "train.lr": 0.05,
    # The baseline phase (common/baseline.py) runs rounds of its own through the same strategy: off,
    # so the spy sees the model's round only.
    "baseline.features": "off",
}


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record what Confide's strategy is given: the replies it accepts (a plain round's updates)
    and the models its server step receives."""
    seen: dict = {"accepted": {}, "server_step": [], "global": []}
    accept, step = ConfideStrategy.accept_train, ConfideStrategy.server_step

    def accept_train(self, server_round, replies, extra_check=None):
        out = accept(self, server_round, replies, extra_check)
        for m in out:
            seen["accepted"][str(m.content["site"]["name"])] = {
                k: v.numpy().copy() for k, v in m.content["arrays"].items()
            }
        return out

    def server_step(self, server_round, template, mean):
        seen["server_step"].append({k: v.numpy().copy() for k, v in mean.items()})
        seen["global"].append({k: v.numpy().copy() for k, v in template.content["arrays"].items()})
        return step(self, server_round, template, mean)

    monkeypatch.setattr(ConfideStrategy, "accept_train", accept_train)
    monkeypatch.setattr(ConfideStrategy, "server_step", server_step)
    return seen


def _run(folder: Path, **overrides) -> dict:
    """One simulated run, each site's randomness (BERT's dropout) seeded per message so that a plain
    and a secure run train the same updates (a site's seeds do not depend on the other sites)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = _spy(monkeypatch)
        exp = config_mod.load("simulations/configs/default.yaml", BASE | {"output_dir": str(folder)} | overrides)
        simulate(exp, client_mods=[seeded_sites(exp.seed)])
    return seen


_PLAIN: dict[str, dict] = {}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory):
    """The plain FedAvg run of a model setup, run once per module."""

    def get(setup: str, model: dict) -> dict:
        if setup not in _PLAIN:
            _PLAIN[setup] = _run(tmp_path_factory.mktemp(f"plain-{setup}"), **model)
        return _PLAIN[setup]

    return get


def _floats(weights: dict[str, np.ndarray]) -> list[str]:
    return [k for k, v in weights.items() if np.issubdtype(v.dtype, np.floating)]


def _mean(sites: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.mean([s[k].astype(np.float64) for s in sites], axis=0) for k in _floats(sites[0])}


def _gap(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in _floats(a))


LORA = {
    "model.name": "bert",
    "model.max_length": 16,
    "model.lora_r": 4,
    "data.source": "synthetic_text",
    "data.max_samples": 240,
    "train.batch_size": 16,
    "train.lr": 1e-3,
}


@pytest.mark.parametrize(("setup", "model"), [("resnet8", {}), ("minilm-lora", LORA)])
def test_the_strategy_gets_only_the_sum_and_it_equals_plain_fedavg(
    tmp_path: Path, plain, setup: str, model: dict
) -> None:
    sites = list(plain(setup, model)["accepted"].values())
    secure = _run(tmp_path, **model, **{"secagg.enabled": True})
    assert len(sites) == 3 and plain(setup, model)["server_step"] == []
    assert secure["accepted"] == {}, "a secure round handed individual replies to the strategy"
    (received,) = secure["server_step"]
    # Equal-sized IID sites: plain FedAvg's record weighting is the uniform mean SecAgg+ computes.
    step = 2 * 8.0 / 4194304  # secagg.clip_range 8 over quantization_range levels
    assert _gap(received, _mean(sites)) <= step + 1e-6
    assert min(_gap(received, s) for s in sites) > 100 * step, "the strategy received a single site's weights"


def test_a_site_lost_during_masking_does_not_stop_the_round(tmp_path: Path, plain) -> None:
    """site-2 crashes while training (after the key exchange): the aggregate is the mean of site-0's
    and site-1's updates, which are the plain run's (their seeds do not depend on site-2)."""
    sites = plain("resnet8", {})["accepted"]
    secure = _run(tmp_path, **{"faults.crash_site": 2, "faults.crash_round": 1, "secagg.enabled": True})
    (received,) = secure["server_step"]
    assert _gap(received, _mean([sites["site-0"], sites["site-1"]])) <= 2 * 8.0 / 4194304 + 1e-6
    assert _gap(received, _mean(list(sites.values()))) > 1e-4  # site-2 is not in it


def test_central_dp_noise_in_the_sum_the_coordinator_sees_is_sigma_c(tmp_path: Path) -> None:
    """Sites that learn nothing (lr 1e-12, GroupNorm: no running statistics) send only their noise, so
    what the coordinator's strategy receives minus the global model is the released noise: the sum
    of k=3 sites' N(0, (sigma*C)^2/t) noises, t = the protocol's threshold 2, divided by
    m=3 sites. Its standard deviation, by hand: sqrt(3/2) * sigma * C / 3 = 0.4082 for sigma=C=1
    (per-site noise over sqrt(3) instead of sqrt(t) would give 0.3333; no site noise, ~0)."""
    dp = {"privacy.mode": "central", "privacy.clip_side": "client", "privacy.noise_multiplier": 1.0}
    dp |= {"privacy.clipping_norm": 1.0, "train.lr": 1e-12, "model.norm": "group", "secagg.enabled": True}
    secure = _run(tmp_path / "secure", **dp)
    (received,), (start,) = secure["server_step"], secure["global"]
    noise = np.concatenate([(received[k].astype(np.float64) - start[k]).ravel() for k in _floats(start)])
    assert noise.size > 50_000
    assert float(noise.std()) == pytest.approx(np.sqrt(3 / 2) / 3, rel=0.03)
    assert abs(float(noise.mean())) < 0.01
    (path,) = (tmp_path / "confide-state" / "ledgers").glob("*/central.json")
    ledger = json.loads(path.read_text())
    assert sorted(e["site"] for e in ledger["entries"]) == ["site-0", "site-1", "site-2"], ledger


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"strategy.name": "krum", "strategy.min_sites": 3, "data.num_sites": 3}, "strategy.name"),
        ({"strategy.reject_norm_ratio": 3.0}, "strategy.reject_norm_ratio"),
        ({"privacy.mode": "central"}, "privacy.clip_side"),
        ({"transport.quantize": "int8"}, "transport.quantize"),
        ({"strategy.min_sites": 1}, "strategy.min_sites"),
    ],
)
def test_what_needs_individual_updates_is_refused(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_mod.load("simulations/configs/default.yaml", BASE | {"secagg.enabled": True} | overrides)


@pytest.mark.parametrize(("sampled", "shares", "threshold"), [(2, 2, 2), (3, 3, 2), (5, 5, 3), (10, 10, 7)])
def test_protocol_sizes_follow_flowers_setup_stage(sampled: int, shares: int, threshold: int) -> None:
    """Worked by hand from Flower 1.42's setup stage: shares = round(1.0 * n) (n when <= 2),
    threshold = max(round(0.67 * shares), 2)."""
    cfg = config_mod.load(None, {"secagg.enabled": True}).secagg
    assert SecureAggregation(cfg, 2, 60.0).protocol(sampled) == (shares, threshold)


def test_central_dp_noise_is_split_so_any_threshold_sum_reaches_sigma_c() -> None:
    """Each site's noise is sigma*C/sqrt(t), t the reconstruction threshold (7 of 10 shares at the
    default 0.67): Flower unmasks any 7 survivors' sum, so a larger strategy.min_sites (checked only
    after unmasking) must not shrink it. With 3 sites, threshold 2, min_sites 3: sigma*C/sqrt(2)."""
    cfg = config_mod.load(None, {"secagg.enabled": True}).secagg
    secure = SecureAggregation(cfg, min_sites=2, timeout=60.0, sum_noise_std=1.2)
    assert secure.site_noise_std(10) == pytest.approx(1.2 / np.sqrt(7))
    assert SecureAggregation(cfg, min_sites=9, timeout=60.0, sum_noise_std=1.2).site_noise_std(10) == pytest.approx(
        1.2 / np.sqrt(7)
    )
    assert SecureAggregation(cfg, min_sites=3, timeout=60.0, sum_noise_std=1.0).site_noise_std(3) == pytest.approx(
        1 / np.sqrt(2)
    )


def test_a_sum_unmasked_below_min_sites_is_charged_before_the_round_is_refused(tmp_path: Path) -> None:
    """3 sites, threshold 2, min_sites 3, one site lost after masking: Flower unmasks the two
    survivors' sum, a release. The coordinator's ledger gets one (sigma, 1, 1) entry for each
    survivor, then the round is refused; the lost site is not charged."""
    from server.recorder import RoundRecorder
    from server.secagg import SecureResult, aggregate_secure
    from server.strategy import build_strategy

    keys = {"privacy.mode": "central", "privacy.noise_multiplier": 2.0, "privacy.clip_side": "client"}
    keys |= {"secagg.enabled": True, "data.num_sites": 3, "strategy.min_sites": 3}
    exp = config_mod.load(None, {**keys, "privacy.central_ledger": str(tmp_path / "central.json")})
    ref = {"w": np.zeros(3, np.float32)}
    recorder = RoundRecorder(None)
    dp = build_strategy(exp, ref, recorder, "7")
    recorder.begin(1, bytes_down=0)
    result = SecureResult(
        mean_update={"w": np.zeros(3)}, sites={"a": {"weight": 1.0}, "b": {"weight": 1.0}}, masked_bytes=12,
        sampled=[1, 2, 3], contributed=[1, 2],
    )  # fmt: skip
    arrays = ArrayRecord({"w": Array(ref["w"])})
    with pytest.raises(ConfideError, match="fewer than strategy.min_sites=3"):
        aggregate_secure(dp, 1, result, arrays)
    entries = json.loads((tmp_path / "central.json").read_text())["entries"]
    assert sorted(e["site"] for e in entries) == ["a", "b"]
    assert {(e["noise_multiplier"], e["sample_rate"], e["steps"], e["status"]) for e in entries} == {
        (2.0, 1.0, 1, "committed")
    }
