"""Config: defaults, YAML + overrides precedence, and every rejection names the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common import config as config_mod
from common.config import ExperimentConfig
from common.errors import ConfigError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_are_a_valid_offline_experiment() -> None:
    exp = config_mod.load()
    assert exp.model.name == "resnet18" and exp.data.source == "digits"
    assert exp.data.num_sites == 3 and exp.strategy.rounds == 3


def test_yaml_then_overrides_take_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 0.5\n  batch_size: 8\ndata:\n  labels: [a, b]\n")
    exp = config_mod.load(path, {"train.lr": 0.01})
    assert exp.train.lr == 0.01  # override wins over YAML
    assert exp.train.batch_size == 8  # YAML wins over default
    assert exp.data.labels == ("a", "b")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train:\n  lrr: 0.1\n", "train.lrr"),
        ("bogus: 1\n", "bogus"),
        ("train:\n  lr: fast\n", "train.lr"),
        ("train:\n  lr: -1\n", "train.lr"),
        ("train:\n  batch_size: 2.5\n", "train.batch_size"),
        ("data:\n  partitioner: random\n", "data.partitioner"),
        ("data:\n  val_fraction: 1.5\n", "data.val_fraction"),
        ("data:\n  source: csv\n", "data.path"),
        ("model:\n  name: gpt2\n", "model.name"),
        ("model:\n  in_channels: 2\n", "model.in_channels"),
        ("data:\n  central_eval: maybe\n", "data.central_eval"),
        ("strategy:\n  min_sites: 9\n", "strategy.min_sites"),
        ("train: 3\n", "train"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_mod.load(write(tmp_path, text))


def test_unknown_override_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        config_mod.load(None, {"train.epochs": 3})


def test_model_and_data_modality_must_agree() -> None:
    with pytest.raises(ConfigError, match="model.name 'bert' is a text model"):
        config_mod.load(None, {"model.name": "bert"})


def test_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found: .*nope.yaml"):
        config_mod.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="exp.yaml is not valid YAML"):
        config_mod.load(write(tmp_path, "train: [unclosed\n"))


def test_dump_and_reload_round_trip(tmp_path: Path) -> None:
    exp = config_mod.load(None, {"data.labels": "x,y,z", "train.lr": 0.02, "name": "rt"})
    config_mod.dump(exp, tmp_path / "out.yaml")
    assert config_mod.load(tmp_path / "out.yaml") == exp


def test_run_config_empty_strings_keep_yaml_values(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 0.3\n")
    run_config = {"experiment": str(path), "train.lr": "", "train.batch_size": 4, "data.labels": "a,b"}
    exp = config_mod.load_from_run_config(run_config, app_dir=tmp_path)
    assert exp.train.lr == 0.3 and exp.train.batch_size == 4 and exp.data.labels == ("a", "b")


def test_pyproject_declares_exactly_the_config_keys() -> None:
    """Flower only accepts --run-config keys declared in pyproject; they must not drift."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat = set(_flatten(declared))
    assert flat == set(config_mod.flat_keys()) | {"experiment", "resume"}


def test_shipped_experiments_load() -> None:
    for path in sorted((REPO / "simulations" / "configs").glob("*.yaml")):
        assert isinstance(config_mod.load(path), ExperimentConfig), path


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_an_unknown_override_key_is_blamed_on_the_override_not_the_yaml(tmp_path: Path) -> None:
    """`--set train.lrr=0.1` used to read "unknown config key 'train.lrr' in <the YAML file>"."""
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'train\.lrr' in the overrides; did you mean 'train\.lr'"):
        config_mod.load(path, {"train.lrr": 0.2})
    with pytest.raises(ConfigError, match=r"unknown config key 'trainlr' in the overrides"):
        config_mod.load(path, {"trainlr": 0.2})
