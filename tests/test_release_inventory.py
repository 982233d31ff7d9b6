"""What a run writes is what its privacy statement lists, in each privacy mode.

Proves, on a real (tiny) simulation per mode (off; local DP with noisy site metrics; central DP
with server-side clipping at C = 0.5 and batch size 1, where the sites' updates arrive with norms
well above C and a step count would equal the record count): every key of metrics.jsonl
(recursively, site names normalised) and every quantity of MODEL_CARD.md is listed in the run's
own privacy.json inventory; under DP no site sends a step count or training time; under central DP
every update statistic the coordinator records is of the clipped update (norm <= C); privacy.json
states where the label set came from. And, without a simulation: the coordinator's statistics of an
update under central DP are those of the clipped update, by hand.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from common import config as config_mod
from server.recorder import RoundRecorder
from server.strategy import build_strategy

C = 0.5
CARD_COLUMNS = {"accuracy": "accuracy", "macro-F1": "macro_f1", "ROC AUC": "roc_auc", "loss": "loss",
                "records": "records"}  # fmt: skip
EMPTY = {"-", "n/a", "withheld"}  # how the card shows a value it does not have (common/export.py)
CARD_BULLETS = {"Model": "model", "Labels": "labels", "Data": "data", "Federation": "federation",
                "Exported": "exported"}  # fmt: skip


def json_keys(value: Any, sites: set[str], prefix: str = "") -> set[str]:
    """Every leaf key path of ``value``: a site's name becomes <site>, a list's items []."""
    if isinstance(value, dict):
        out: set[str] = set()
        for key, item in value.items():
            name = "<site>" if key in sites else key
            out |= json_keys(item, sites, f"{prefix}.{name}" if prefix else name)
        return out
    if isinstance(value, list):
        return set().union(*(json_keys(item, sites, f"{prefix}[]") for item in value)) if value else set()
    return {prefix}


def card_keys(text: str) -> set[str]:
    """The quantities MODEL_CARD.md shows: its top bullets, the privacy section, each table cell
    that holds a value (scope or site, column) and the failures list."""
    keys: set[str] = set()
    section, columns = "", []
    for line in text.splitlines():
        if line.startswith("## "):
            section, columns = line[3:], []
        elif not section and line.startswith("- ") and ":" in line:
            label = line[2:].split(":", 1)[0].split(" (")[0]
            keys.add(CARD_BULLETS.get(label, f"unknown bullet '{label}'"))
        elif section.startswith("Privacy") and line.startswith("- "):
            keys.add("privacy")
        elif section.startswith("Sites that failed") and line.startswith("- ") and line != "- none":
            keys.add("failures")
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not columns:
                columns = cells
                continue
            scope = "metrics." + cells[0] if section.startswith("Metrics") else "sites.<site>"
            keys |= {
                f"{scope}.{CARD_COLUMNS.get(col, col)}" for col, v in zip(columns[1:], cells[1:]) if v not in EMPTY
            }
    return keys


MODES = {
    "off": {},
    "local": {
        "privacy.mode": "local",
        "privacy.noise_multiplier": 1.0,
        "privacy.site_metrics": "noisy",
        "train.batch_size": 8,
    },  # fmt: skip
    "central": {
        "privacy.mode": "central",
        "privacy.noise_multiplier": 0.5,
        "privacy.clipping_norm": C,
        "train.batch_size": 1,
    },  # fmt: skip
}


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_every_key_a_run_writes_is_in_its_privacy_statement(mode: str) -> None:
    from simulations.local import simulate

    exp = config_mod.load(
        None,
        {"model.name": "resnet8", "data.num_sites": 2, "strategy.min_sites": 2, "strategy.rounds": 1,
         "data.max_samples": 40, **MODES[mode]},
    )  # fmt: skip
    run = simulate(exp)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    sites = {name for line in lines for name in line["sites"]} | set(lines[-1]["privacy"].get("sites", {}))
    assert sites == {"site-0", "site-1"}
    statement = json.loads((run / "privacy.json").read_text())
    listed = statement["inventory"]

    written = set().union(*(json_keys(line, sites) for line in lines))
    assert written - set(listed["metrics.jsonl"]) == set(), "metrics.jsonl keys missing from privacy.json"
    card = card_keys((run / "MODEL_CARD.md").read_text())
    assert card - set(listed["MODEL_CARD.md"]) == set(), "model card quantities missing from privacy.json"
    assert {"model", "labels", "privacy", "metrics.central.accuracy"} <= card  # the parser reads the card

    trained = [line["sites"][s]["train"] for line in lines[1:] for s in sites]
    assert len(trained) == 2 and all(t["bytes_up"] > 0 for t in trained)
    if mode == "off":
        assert all("train_steps" in t and "update_norm" in t for t in trained)
    else:
        assert not any({"train_steps", "train_seconds", "num_examples"} & set(t) for t in trained)
        assert all(line["slowest_site_train_seconds"] is None for line in lines)
    if mode == "central":
        norms = [t["update_norm"] for t in trained]
        assert all(0 < norm <= C * (1 + 1e-6) for norm in norms), f"update norms {norms} above C = {C}"
        assert not any("clipped update" in r for r in statement["not_protected"][:-1])
    resolved = config_mod.load(run / "config.yaml")
    derived = resolved.data.labels_from_records
    assert statement["labels"].startswith("derived from the pooled" if derived else "declared in the job")


def reply(node: int, site: str, w: list[float]):
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=node, dst_node_id=0, reply_to_message_id="x",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict(
        {
            "metrics": MetricRecord({"weight": 1.0}),
            "site": ConfigRecord({"name": site}),
            "arrays": ArrayRecord({"w": Array(np.asarray(w, np.float32))}),
        }
    )
    return make_message(meta, content=content)


@pytest.mark.unit
def test_central_dp_records_statistics_of_the_clipped_update(tmp_path: Path) -> None:
    """With C = 0.5 at the server, updates a = (3, 4) (norm 5), b = (-0.3, -0.4) and c = (0, 0.2)
    are recorded as the clipped a = (0.3, 0.4), b and c: norms 0.5, 0.5, 0.2 (ratios 1, 1, 0.4 to
    the median 0.5), median update (0, 0.2), cosines 0.08/(0.5*0.2) = 0.8, -0.8 and 1. As they
    arrived, a's norm would be 5 and its ratio 10."""
    exp = config_mod.load(
        None,
        {"privacy.mode": "central", "privacy.noise_multiplier": 1.0, "privacy.clipping_norm": C,
         "privacy.central_ledger": str(tmp_path / "central.json"), "data.num_sites": 3, "strategy.min_sites": 1},
    )  # fmt: skip
    recorder = RoundRecorder(None)
    dp = build_strategy(exp, {"w": np.zeros(2, np.float32)}, recorder, "r1")
    dp.current_arrays, dp.sent = ArrayRecord({"w": Array(np.zeros(2, np.float32))}), 3
    recorder.begin(1, bytes_down=0)
    dp.aggregate_train(1, [reply(1, "a", [3.0, 4.0]), reply(2, "b", [-0.3, -0.4]), reply(3, "c", [0.0, 0.2])])
    want = {"a": (0.5, 1.0, 0.8), "b": (0.5, 1.0, -0.8), "c": (0.2, 0.4, 1.0)}
    for name, (norm, ratio, cosine) in want.items():
        got = recorder.current.train[name]
        assert got["update_norm"] == pytest.approx(norm, rel=1e-5)
        assert got["update_norm_ratio"] == pytest.approx(ratio, rel=1e-5)
        assert got["update_cosine_to_median"] == pytest.approx(cosine, rel=1e-5)
