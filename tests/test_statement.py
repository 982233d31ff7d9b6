"""common/privacy/governance/statement.py: the privacy statement says what the job did, per mode and release level.

Proves: without DP it claims nothing; under local DP it names the unit and adjacency, each site's
(epsilon, delta) as recorded, what else was released and how (withheld vs noised and accounted vs
exact and unprotected), and the check command; under central DP the unit is the site. Where the
label set came from; the coordinator seeing clipped updates only in central mode; no count, step
count or training time a withholding site would send; docs/privacy.md's table is the inventory's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import config as config_mod
from common.privacy.governance import statement

pytestmark = pytest.mark.unit


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
    assert "Site 'h1': (epsilon=2.5000, delta=1e-05)" in text and "common.privacy.governance.check" in text
    noisy = statement.build(exp(**{"privacy.mode": "local", "privacy.site_metrics": "noisy"}), {"mode": "local"})
    assert any("charged to the site's ledger" in r for r in noisy["released_besides_weights"])
    exact = statement.build(exp(**{"privacy.mode": "local", "privacy.site_metrics": "exact"}), {"mode": "local"})
    assert any("NOT protected" in r for r in exact["released_besides_weights"])


def test_central_statement_protects_sites() -> None:
    record = {"mode": "central", "sites": {"a": {"epsilon": 1.2, "delta": 1e-5}}, "noise_multiplier": 2.0}
    data = statement.build(exp(**{"privacy.mode": "central"}), record)
    assert data["unit_of_privacy"].startswith("one site's entire contribution")
    assert data["central"]["noise_multiplier"] == 2.0 and data["epsilon_max"] == 1.2


def test_label_set_origin_is_stated() -> None:
    """Labels declared in the job are public; labels the coordinator derived from the pooled
    training records are a release about them that no epsilon covers."""
    for mode in ("off", "local", "central"):
        declared = statement.build(exp(**{"privacy.mode": mode}), {"mode": mode})
        assert declared["labels"] == "declared in the job: public, not a release"
        derived = statement.build(exp(**{"privacy.mode": mode, "data.labels_from_records": True}), {"mode": mode})
        assert derived["labels"].startswith("derived from the pooled training records by the coordinator")
        assert "no epsilon covers" in derived["labels"]
        assert f"Label set: {derived['labels']}." in statement.lines(derived)


def test_the_coordinator_seeing_clipped_updates_is_named_only_in_central_mode() -> None:
    local = statement.build(exp(**{"privacy.mode": "local"}), {"mode": "local"})
    assert not any("clipped update" in r or "central" in r for r in local["not_protected"])
    assert not any("clipped update" in line for line in statement.lines(local))
    central = statement.build(exp(**{"privacy.mode": "central"}), {"mode": "central"})
    assert any("sees each clipped update before noise" in r for r in central["not_protected"])


def test_withheld_statements_match_what_the_inventory_lets_a_site_send() -> None:
    """'no record count, step count or training time is sent' holds in both DP modes: none of the
    keys that count records or steps, or time the training, is in a withholding run's inventory;
    central sites send no DP-SGD parameters; with 'exact' they are listed as unprotected."""
    counting = ("num_examples", "train_steps", "train_seconds", "train_loss", "steps", "sample_rate")
    for mode in ("local", "central"):
        data = statement.build(exp(**{"privacy.mode": mode}), {"mode": mode})
        assert any("no record count, step count or training time" in r for r in data["released_besides_weights"])
        sent = {k.rsplit(".", 1)[1] for k in data["inventory"]["metrics.jsonl"] if k.startswith("sites.<site>.train.")}
        assert sent.isdisjoint({"num_examples", "train_steps", "train_seconds", "train_loss"})
        if mode == "central":
            assert sent.isdisjoint(counting)
            assert not any("sample rate" in r for r in data["released_besides_weights"])
        exact = statement.build(exp(**{"privacy.mode": mode, "privacy.site_metrics": "exact"}), {"mode": mode})
        listed = exact["inventory"]["metrics.jsonl"]
        assert "NOT protected" in listed["sites.<site>.train.train_steps"]
        assert "NOT protected" in listed["slowest_site_train_seconds"]
    data = statement.build(exp(**{"privacy.mode": "central"}), {"mode": "central"})
    assert "clipped to norm C" in data["inventory"]["metrics.jsonl"]["sites.<site>.train.update_norm"]


def test_docs_table_is_the_inventory() -> None:
    """docs/privacy.md's "What leaves a site, in each mode" is the inventory's table, line for line."""
    from common.privacy.governance import inventory

    text = (Path(__file__).resolve().parents[1] / "docs" / "privacy.md").read_text().splitlines()
    start = text.index("### What leaves a site, in each mode")
    first = next(i for i, line in enumerate(text) if i > start and line.startswith("|"))
    table = []
    for line in text[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert table == inventory.site_table()
