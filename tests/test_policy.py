"""common/privacy/governance/policy.py and the ClientApp: a site's own policy wins over any job.

Proves: a deployed site without a policy gets the strict built-in one; each rule (mode, delta cap,
noise floor, accountant, released metrics, persistent ledger, epsilon target) refuses a job asking
for less, naming the rule; the policy comes from the site's file and node config (node config wins),
never from the job; bad policy files stop with a message naming the file and key; and the ClientApp
checks the job before it touches the site's data.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from client.app import _setup
from common import config as config_mod
from common.errors import ConfigError, PolicyRefused
from common.privacy.governance.policy import SIMULATION, STRICT, from_node_config

pytestmark = pytest.mark.unit

DEPLOYED = {"site-name": "h1", "data-path": "/nonexistent/site.npz"}


def job(**kw: object) -> config_mod.PrivacyConfig:
    return config_mod.load(None, {"privacy.mode": "local", **kw}).privacy


@pytest.mark.parametrize(
    ("asks", "rule"),
    [
        ({"privacy.mode": "off"}, "allowed-modes"),
        ({"privacy.mode": "central"}, "allowed-modes"),
        ({"privacy.delta": 1e-4}, "max-delta"),
        ({"privacy.noise_multiplier": 0.3}, "min-noise-multiplier"),
        ({"privacy.target_epsilon": 20.0}, "max-epsilon"),
        ({"privacy.site_metrics": "exact"}, "site-metrics"),
        ({"privacy.site_metrics": "noisy"}, "site-metrics"),
    ],
)
def test_strict_default_refuses_a_job_asking_for_less_privacy(asks: dict, rule: str) -> None:
    policy = from_node_config({**DEPLOYED, "ledger-dir": "/var/lib/confide/ledger"}, deployed=True)
    assert policy.allowed_modes == ("local",) and policy.max_delta == 1e-5 and policy.site_metrics == "withhold"
    with pytest.raises(PolicyRefused, match=f"rule '{rule}'"):
        policy.check_job(job(**asks))
    policy.check_job(job(**{"privacy.noise_multiplier": 1.0}))  # a job within the policy passes


def test_deployed_dp_site_needs_a_persistent_ledger() -> None:
    with pytest.raises(PolicyRefused, match="rule 'ledger-dir'"):
        from_node_config(DEPLOYED, deployed=True).check_job(job())
    from_node_config({**DEPLOYED, "ledger-dir": "/x"}, deployed=True).check_job(job())


def test_policy_file_and_node_config_precedence(tmp_path: Path) -> None:
    f = tmp_path / "privacy.json"
    f.write_text(json.dumps({"allowed-modes": ["local", "central"], "max-epsilon": 3, "accountants": ["rdp"],
                             "site-metrics": "noisy", "ledger-dir": "/l"}))  # fmt: skip
    policy = from_node_config({**DEPLOYED, "privacy-policy": str(f), "max-epsilon": 2}, deployed=True)
    assert policy.max_epsilon == 2.0 and policy.allowed_modes == ("local", "central")  # node config wins
    assert str(f) in policy.source
    with pytest.raises(PolicyRefused, match="rule 'accountants'"):
        policy.check_job(job(**{"privacy.accountant": "prv"}))
    with pytest.raises(PolicyRefused, match="rule 'max-epsilon'"):
        policy.check_job(job(**{"privacy.target_epsilon": 3.0}))
    policy.check_job(job(**{"privacy.site_metrics": "noisy", "privacy.release_noise_multiplier": 5.0}))


def test_bad_policy_files_name_the_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    with pytest.raises(ConfigError, match="privacy policy file not found"):
        from_node_config({"privacy-policy": str(f)}, deployed=True)
    f.write_text("{nope")
    with pytest.raises(ConfigError, match=r"p\.json is not valid JSON"):
        from_node_config({"privacy-policy": str(f)}, deployed=True)
    f.write_text(json.dumps({"max-epsilion": 1}))
    with pytest.raises(ConfigError, match="unknown key 'max-epsilion'"):
        from_node_config({"privacy-policy": str(f)}, deployed=True)
    f.write_text(json.dumps({"max-epsilon": "lots"}))
    with pytest.raises(ConfigError, match="'max-epsilon'.*p.json"):
        from_node_config({"privacy-policy": str(f)}, deployed=True)
    with pytest.raises(ConfigError, match="'site-metrics'"):
        from_node_config({"site-metrics": "everything"}, deployed=False)


def test_simulated_site_default_is_permissive_and_check_round_enforces_the_floor() -> None:
    assert from_node_config({"partition-id": 0, "num-partitions": 2}, deployed=False) == SIMULATION
    SIMULATION.check_job(job(**{"privacy.mode": "off"}))
    with pytest.raises(PolicyRefused, match="rule 'min-noise-multiplier'.*0.31"):
        STRICT.check_round(noise_multiplier=0.31, delta=1e-6)  # e.g. a calibrated sigma below the floor
    with pytest.raises(PolicyRefused, match="rule 'max-delta'"):
        STRICT.check_round(noise_multiplier=1.0, delta=2e-5)


def test_client_app_refuses_before_touching_the_sites_data() -> None:
    """The job (run config) asks for no DP; the site's data path does not exist. The refusal names
    the policy rule: the job was checked before any data was read."""
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))}), "config": ConfigRecord({})})
    msg = make_message(meta, content=content)
    ctx = Context(run_id=1, node_id=7, node_config={**DEPLOYED, "ledger-dir": "/l"}, state=RecordDict(),
                  run_config={"privacy.mode": "off"})  # fmt: skip
    with pytest.raises(PolicyRefused, match="rule 'allowed-modes'"):
        _setup(msg, ctx, None)
