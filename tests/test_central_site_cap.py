"""A site bounds its own site-level (central DP) epsilon: it records every central round it answers
in its own ledger and refuses, before training, the round or job that would pass its cap; its
policy can demand client-side clipping or secure aggregation; the coordinator's central ledger
refuses a job it cannot finish under privacy.central_max_epsilon.

Expected epsilons are computed here from the inputs alone: k Gaussian releases of noise multiplier
sigma have Renyi DP k*alpha/(2 sigma^2) at order alpha, converted to (epsilon, delta) with the
conversion Opacus's RDP accountant uses (Balle et al. 2020), minimised over Opacus's orders."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from common import config as config_mod
from common.batches import make_dataset
from common.data import LabelSet, RawData
from common.errors import PolicyRefused
from common.models import build_model
from common.privacy.governance.central import CentralLedger, central_plan
from common.privacy.governance.ledger import Ledger
from common.privacy.governance.policy import SIMULATION, from_node_config
from common.site import SiteRuntime, SiteSpec, train_round

pytestmark = pytest.mark.unit

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
DELTA = 1e-5  # min(1e-5, 1/(10 n)) for the 48 records below


def gaussian_epsilon(releases: int, sigma: float, delta: float = DELTA) -> float:
    return min(
        releases * a / (2 * sigma**2) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        for a in ORDERS
    )


def site(exp: config_mod.ExperimentConfig) -> SiteRuntime:
    rng = np.random.default_rng(0)
    raw = RawData(labels=np.arange(48) % 2, images=rng.integers(0, 255, (48, 1, 8, 8), np.uint8))
    ds = make_dataset(raw, exp.model)
    return SiteRuntime(SiteSpec("s", 0, 1), build_model(exp, 2), ds, ds, LabelSet(("0", "1")))


def central_exp(tmp_path: Path, sigma: float, **kw: object) -> config_mod.ExperimentConfig:
    keys = {"privacy.mode": "central", "privacy.noise_multiplier": sigma, "model.name": "resnet8"}
    keys |= {"model.norm": "group", "train.max_steps": 1, "privacy.ledger_dir": str(tmp_path / "ledgers")}
    return config_mod.load(None, {**keys, **kw})


def test_a_site_refuses_the_central_round_that_would_pass_its_cap(tmp_path: Path) -> None:
    """sigma = 10, cap 1: six rounds reach 0.990, a seventh would reach 1.077 and is refused."""
    sigma, cap = 10.0, 1.0
    assert gaussian_epsilon(6, sigma) < cap < gaussian_epsilon(7, sigma)
    exp = central_exp(tmp_path, sigma)
    rt, policy = site(exp), dataclasses.replace(SIMULATION, max_epsilon=cap)
    for rnd in range(1, 7):
        train_round(exp, rt, rnd, run_id="1", policy=policy)
    with pytest.raises(PolicyRefused, match=r"from 0\.990 to 1\.077, above its cap 1"):
        train_round(exp, rt, 7, run_id="1", policy=policy)
    (path,) = (tmp_path / "ledgers").glob("*/s.json")
    entries = Ledger.open(path).entries
    assert [(e["kind"], e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries] == [
        ("central", sigma, 1.0, 1)
    ] * 6


def test_small_jobs_compose_until_the_twentieth_is_refused(tmp_path: Path) -> None:
    """Twenty one-round jobs, each far below the cap on its own: the site's ledger composes them,
    and the twentieth job's round is the one refused."""
    sigma = 25.0
    cap = (gaussian_epsilon(19, sigma) + gaussian_epsilon(20, sigma)) / 2
    exp = central_exp(tmp_path, sigma, **{"strategy.rounds": 1})
    rt, policy = site(exp), dataclasses.replace(SIMULATION, max_epsilon=cap)
    for job in range(1, 20):
        train_round(exp, rt, 1, run_id=str(job), policy=policy)
    with pytest.raises(PolicyRefused, match="above its cap"):
        train_round(exp, rt, 1, run_id="20", policy=policy)


def test_a_site_can_require_client_clipping_and_secure_aggregation() -> None:
    policy = from_node_config(
        {"data-path": "x.npz", "allowed-modes": "central", "require-client-clipping": "true"}, deployed=True
    )
    server_side = config_mod.load(None, {"privacy.mode": "central", "privacy.clip_side": "server"}).privacy
    client_side = dataclasses.replace(server_side, clip_side="client")
    with pytest.raises(PolicyRefused, match="rule 'require-client-clipping'.*clip_side='server'"):
        policy.check_job(server_side)
    dataclasses.replace(policy, require_ledger=False).check_job(client_side)  # accepted
    masked = dataclasses.replace(policy, require_secure_aggregation=True, require_ledger=False)
    with pytest.raises(PolicyRefused, match="rule 'require-secure-aggregation'"):
        masked.check_job(client_side, secure_aggregation=False)
    masked.check_job(client_side, secure_aggregation=True)


def test_the_coordinator_refuses_a_job_it_cannot_finish_under_its_cap(tmp_path: Path) -> None:
    """sigma = 10 over 7 rounds reaches 1.077 for a new site: refused at a cap of 1 before any
    round; 6 rounds (0.990) are accepted. A site with 2 rounds already in the ledger from another
    job makes a 5-round job (7 releases) fail the same cap."""
    exp = central_exp(tmp_path, 10.0, **{"strategy.rounds": 7, "privacy.central_ledger": str(tmp_path / "c.json")})
    ledger = CentralLedger(tmp_path / "c.json", central_plan(exp))
    with pytest.raises(PolicyRefused, match=r"a site new to this ledger to site-level epsilon 1\.077"):
        ledger.check_can_finish("1", 7, cap=1.0)
    ledger.check_can_finish("1", 6, cap=1.0)
    for rnd in (1, 2):
        ledger.commit(ledger.reserve(["a"], "1", rnd, cap=1.0))
    ledger.check_can_finish("1", 6, cap=1.0)  # the job's own two rounds are not counted twice
    with pytest.raises(PolicyRefused, match=r"site 'a' to site-level epsilon 1\.077"):
        CentralLedger(tmp_path / "c.json", central_plan(exp)).check_can_finish("2", 5, cap=1.0)
