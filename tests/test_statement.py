"""common/privacy/statement.py: the privacy statement says what the job did, per mode and release level.

Proves: without DP it claims nothing; under local DP it names the unit and adjacency, each site's
(epsilon, delta) as recorded, what else was released and how (withheld vs noised and accounted vs
exact and unprotected), and the check command; under central DP the unit is the site.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import config as config_mod
from common.privacy import statement


def exp(**kw: object) -> config_mod.ExperimentConfig:
    return config_mod.load(None, kw)


def test_no_dp_claims_nothing(tmp_path: Path) -> None:
    data = statement.write(tmp_path, exp(), {"mode": "off"})
    assert json.loads((tmp_path / "privacy.json").read_text()) == data
    assert "no formal privacy guarantee" in statement.lines(data)[0]


def test_local_statement_names_sites_releases_and_the_check() -> None:
    sites = {"h1": {"epsilon": 2.5, "delta": 1e-5, "epsilon_run": 1.0}}
    withheld = statement.build(exp(**{"privacy.mode": "local"}), {"mode": "local", "sites": sites})
    assert withheld["unit_of_privacy"] == "one training record of one site"
    assert withheld["epsilon_max"] == 2.5 and withheld["sites"]["h1"]["delta"] == 1e-5
    assert any("uniform FedAvg" in r for r in withheld["released_besides_weights"])
    text = "\n".join(statement.lines(withheld))
    assert "Site 'h1': (epsilon=2.5000, delta=1e-05)" in text and "common.privacy.check" in text
    noisy = statement.build(exp(**{"privacy.mode": "local", "privacy.site_metrics": "noisy"}), {"mode": "local"})
    assert any("charged to the site's ledger" in r for r in noisy["released_besides_weights"])
    exact = statement.build(exp(**{"privacy.mode": "local", "privacy.site_metrics": "exact"}), {"mode": "local"})
    assert any("NOT protected" in r for r in exact["released_besides_weights"])


def test_central_statement_protects_sites() -> None:
    record = {"mode": "central", "sites": {"a": {"epsilon": 1.2, "delta": 1e-5}}, "noise_multiplier": 2.0}
    data = statement.build(exp(**{"privacy.mode": "central"}), record)
    assert data["unit_of_privacy"].startswith("one site's entire contribution")
    assert data["central"]["noise_multiplier"] == 2.0 and data["epsilon_max"] == 1.2
