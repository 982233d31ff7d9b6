"""A site's pinned schema (common/schema.py): a job asking for another column or label set is
refused naming the site's node-config rule and the job's own value, never the pinned one."""

from __future__ import annotations

import hashlib

import pytest

from common import config as config_mod
from common.errors import ConfigError, PolicyRefused
from common.schema import SchemaPins, labels_digest

pytestmark = pytest.mark.unit


def _data(**overrides):
    base = {"model.name": "bert", "data.source": "csv", "data.path": "x.csv"}
    return config_mod.load(None, {**base, **overrides}).data


def test_a_job_within_the_pins_passes_and_others_are_refused_without_the_pinned_values() -> None:
    pins = SchemaPins.from_node_config({"text-field": "note", "label-field": "intent", "labels": "card,loan"})
    pins.check(_data(**{"data.text_field": "note", "data.label_field": "intent"}), ("card", "loan"), "h1")
    with pytest.raises(PolicyRefused, match="data.label_field='note'.*node config 'label-field'") as info:
        pins.check(_data(**{"data.text_field": "note", "data.label_field": "note"}), ("card", "loan"), "h1")
    assert "intent" not in str(info.value)
    with pytest.raises(PolicyRefused, match="node config 'text-field'"):
        pins.check(_data(**{"data.text_field": "balance", "data.label_field": "intent"}), ("card", "loan"), "h1")
    with pytest.raises(PolicyRefused, match="node config 'labels'"):
        pins.check(_data(**{"data.text_field": "note", "data.label_field": "intent"}), ("loan", "card"), "h1")


def test_a_label_digest_pins_names_and_order() -> None:
    digest = labels_digest(("card", "loan"))
    assert digest == hashlib.sha256(b"card\nloan").hexdigest()  # the documented definition, by hand
    pins = SchemaPins.from_node_config({"labels-sha256": digest.upper()})
    pins.check(_data(), ("card", "loan"), "h1")
    with pytest.raises(PolicyRefused, match="labels-sha256"):
        pins.check(_data(), ("loan", "card"), "h1")


@pytest.mark.parametrize(
    "node, key",
    [({"labels": "a,b", "labels-sha256": "0" * 64}, "both"), ({"labels-sha256": "xyz"}, "labels-sha256")],
)
def test_bad_pins_are_refused_naming_the_key(node: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SchemaPins.from_node_config(node)
