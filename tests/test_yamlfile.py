"""common/yamlfile.py and common/cli.py's --set: YAML read as YAML 1.2 reads it, so the words a
config accepts as values (``off`` for baseline.features or privacy.mode) arrive as those words."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import config as config_mod
from common.cli import parse_sets
from common.errors import ConfideError
from common.yamlfile import loads

pytestmark = pytest.mark.unit


def test_only_true_and_false_are_booleans() -> None:
    got = loads("a: off\nb: yes\nc: On\nd: no\ne: true\nf: FALSE\ng: 'true'\nh: 1\ni: 0.5")
    assert got == {"a": "off", "b": "yes", "c": "On", "d": "no", "e": True, "f": False, "g": "true", "h": 1, "i": 0.5}


def test_off_reaches_the_config_from_set_and_from_a_file(tmp_path: Path) -> None:
    exp = config_mod.load(None, parse_sets(["baseline.features=off", "privacy.mode=off", "data.central_eval=false"]))
    assert exp.baseline.features == "off" and exp.privacy.mode == "off" and exp.data.central_eval is False
    path = tmp_path / "job.yaml"
    path.write_text("baseline:\n  features: off\n")
    assert config_mod.load(path).baseline.features == "off"


def test_a_bad_set_value_stops_in_one_line_naming_the_key() -> None:
    with pytest.raises(ConfideError, match=r"^--set train.lr: '\[0.1' is not a YAML value"):
        parse_sets(["train.lr=[0.1"])
    with pytest.raises(ConfideError, match="--set expects key=value, got 'train.lr'"):
        parse_sets(["train.lr"])
