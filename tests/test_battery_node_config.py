"""A site's node config (what its SuperNode passes: ``data-path``, ``site-name``, ``privacy-policy``,
``ledger-dir``, ``require-ledger``, ...) is refused in one line naming the key or file when it is
wrong: ``SiteSpec.from_node_config`` (common/site.py) for the site's identity and the keys it knows,
``from_node_config`` (common/privacy/governance/policy.py) for its privacy policy and policy file. Each case
must raise ConfideError (or a subclass) whose message is a single line holding every expected
fragment. The data file itself is checked where the site reads it (``site_records``), after the
job was checked against the policy (tests/test_policy.py proves that order), so the data-path cases
go through that reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common import config as config_mod
from common.data import LabelSet
from common.errors import ConfideError
from common.privacy.governance.policy import from_node_config as policy_from_node_config
from common.site import SiteSpec, site_records
from tests.one_line import directory, write_files

pytestmark = pytest.mark.unit

SITE = {"site-name": "h1", "data-path": "{tmp}/train.csv"}  # a valid deployed site: each case changes one thing
CSV = "text,label\nfirst record,a\nsecond record,b\nthird record,a\nfourth record,b\n"


def spec(node: dict[str, Any]) -> object:
    return SiteSpec.from_node_config(node)


def policy(node: dict[str, Any]) -> object:
    return policy_from_node_config(node, deployed=True)


def read(node: dict[str, Any]) -> object:
    exp = config_mod.load(None, {"data.source": "csv", "data.path": "job.csv", "model.name": "bert",
                                 "data.labels": "a,b", "data.num_sites": 1, "strategy.min_sites": 1})  # fmt: skip
    return site_records(exp, SiteSpec.from_node_config(node), LabelSet(("a", "b")))


@dataclass(frozen=True)
class Case:
    id: str
    parser: Callable[[dict[str, Any]], object]
    node: dict[str, Any]  # the node config ({tmp}: the test folder in string values)
    expect: tuple[str, ...]
    files: dict[str, object] = field(default_factory=dict)


def site(**change: Any) -> dict[str, Any]:
    return {**SITE, **change}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in SITE.items() if k != key}


P = {"privacy-policy": "{tmp}/p.json"}


# fmt: off
CASES = [
    # identity and the keys a node config may hold
    Case("empty", spec, {}, ("'data-path'", "'partition-id'")),
    Case("unknown-key-typo", spec, site(**{"max-epsilom": 3}),
         ("unknown node config key 'max-epsilom'", "max-epsilon")),
    Case("unknown-key-underscore", spec, {**without("data-path"), "data_path": "x.csv", "partition-id": 0,
                                          "num-partitions": 1}, ("'data_path'", "did you mean 'data-path'")),
    Case("site-name-missing", spec, without("site-name"), ("'site-name' is missing", "'data-path'")),
    Case("site-name-empty", spec, site(**{"site-name": ""}), ("'site-name'", "plain name", "''")),
    Case("site-name-blank", spec, site(**{"site-name": "   "}), ("'site-name'", "plain name")),
    Case("site-name-a-path", spec, site(**{"site-name": "hospitals/h1"}), ("'site-name'", "'hospitals/h1'")),
    Case("site-name-backslash", spec, site(**{"site-name": "h\\1"}), ("'site-name'", "path separator")),
    Case("site-name-dot-dot", spec, site(**{"site-name": ".."}), ("'site-name'", "'..'")),
    Case("site-name-newline", spec, site(**{"site-name": "h1\nh2"}), ("'site-name'",)),
    Case("site-name-a-bool", spec, site(**{"site-name": True}), ("'site-name'", "True")),
    Case("partition-id-a-word", spec, {"partition-id": "first", "num-partitions": 2}, ("'partition-id'", "integer")),
    Case("partition-id-beyond", spec, {"partition-id": 2, "num-partitions": 2},
         ("'partition-id'=2", "'num-partitions'=2")),
    Case("partition-id-without-count", spec, {"partition-id": 0}, ("'partition-id'=0", "'num-partitions'=None")),
    Case("data-format-unknown", spec, site(**{"data-format": "xlsx"}), ("'data-format'='xlsx'", "csv")),
    Case("data-format-without-path", spec, {"partition-id": 0, "num-partitions": 1, "data-format": "csv"},
         ("'data-format'='csv'", "'data-path'")),
    # the data file, where the site reads it
    Case("data-path-missing", read, SITE, ("train.csv", "not found", "'data-path'")),
    Case("data-path-a-folder", read, SITE, ("train.csv", "directory", "'data-path'"), {"train.csv": directory}),
    # the policy file
    Case("policy-file-missing", policy, P, ("privacy policy file not found", "p.json", "'privacy-policy'")),
    Case("policy-file-a-folder", policy, P, ("p.json", "is a folder", "'privacy-policy'"), {"p.json": directory}),
    Case("policy-file-empty", policy, P, ("p.json", "is empty"), {"p.json": ""}),
    Case("policy-file-not-json", policy, P, ("p.json", "not valid JSON", "line 1"), {"p.json": "max-epsilon: 3\n"}),
    Case("policy-file-not-utf8", policy, P, ("p.json", "not UTF-8"), {"p.json": b'{"site-metrics": "caf\xe9"}'}),
    Case("policy-file-a-list", policy, P, ("p.json", "JSON object", "list"), {"p.json": '["local"]'}),
    Case("policy-file-duplicate-key", policy, P, ("p.json", "'max-epsilon' appears twice"),
         {"p.json": '{"max-epsilon": 1, "max-epsilon": 100}'}),
    Case("policy-file-unknown-key", policy, P, ("p.json", "unknown key 'max-epsilion'"),
         {"p.json": '{"max-epsilion": 1}'}),
    Case("policy-file-epsilon-zero", policy, P, ("'max-epsilon'", "> 0", "policy file", "p.json"),
         {"p.json": '{"max-epsilon": 0}'}),
    Case("policy-file-require-ledger-a-number", policy, P, ("'require-ledger'", "p.json", "1", "true or false"),
         {"p.json": '{"require-ledger": 1}'}),
    Case("policy-file-ledger-dir-a-number", policy, P,
         ("'ledger-dir'", "p.json", "5"), {"p.json": '{"ledger-dir": 5}'}),
    Case("policy-file-modes-a-number", policy, P,
         ("'allowed-modes'", "p.json", "3"), {"p.json": '{"allowed-modes": 3}'}),
    # policy keys in the node config
    Case("require-ledger-yes", policy, {"require-ledger": "yes"}, ("'require-ledger'", "node config", "'yes'",
                                                                     "true or false")),
    Case("ledger-dir-a-file", policy, {"ledger-dir": "{tmp}/ledger"}, ("'ledger-dir'", "node config", "is a file"),
         {"ledger": "not a folder"}),
    Case("max-delta-above-one", policy, {"max-delta": 2}, ("'max-delta'", "(0, 1]", "node config")),
    Case("min-noise-negative", policy, {"min-noise-multiplier": -0.5},
         ("'min-noise-multiplier'", ">= 0", "node config")),
    Case("max-epsilon-a-word", policy, {"max-epsilon": "lots"}, ("'max-epsilon'", "'lots'", "a number")),
    Case("max-epsilon-nan", policy, {"max-epsilon": "nan"}, ("'max-epsilon'", "'nan'")),
    Case("allowed-modes-unknown", policy, {"allowed-modes": "local,everything"},
         ("'allowed-modes'", "off, local, central")),
    Case("site-metrics-unknown", policy, {"site-metrics": "all"}, ("'site-metrics'", "withhold, noisy, exact")),
    Case("accountant-unknown", policy, {"accountant": "gdp"}, ("'accountant'", "rdp or prv")),
]
# fmt: on


def fill(value: Any, tmp: Path) -> Any:
    return value.format(tmp=tmp) if isinstance(value, str) and "{tmp}" in value else value


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_a_bad_node_config_is_refused_in_one_line_naming_the_key_or_file(case: Case, tmp_path: Path) -> None:
    write_files(tmp_path, case.files)
    node = {k: fill(v, tmp_path) for k, v in case.node.items()}
    with pytest.raises(ConfideError) as info:
        case.parser(node)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in case.expect:
        assert fragment.format(tmp=tmp_path) in message, f"{fragment!r} not in: {message}"


def test_the_valid_node_config_the_cases_start_from_is_accepted(tmp_path: Path) -> None:
    """Each case differs from this one by one key, so its refusal is that key's doing."""
    (tmp_path / "train.csv").write_text(CSV)
    (tmp_path / "p.json").write_text(json.dumps({"max-epsilon": 3, "ledger-dir": str(tmp_path / "ledger")}))
    node = {k: fill(v, tmp_path) for k, v in {**SITE, **P}.items()}
    train, held_out = read(node)
    assert len(train) + len(held_out) == 4
    assert SiteSpec.from_node_config(node).name == "h1"
    assert policy(node).max_epsilon == 3.0 and policy(node).ledger_dir == str(tmp_path / "ledger")


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
