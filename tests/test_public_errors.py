"""What a deployed site's failure tells the coordinator (client/public_errors.py, client/app.py):
the label-field attack (a job sets data.label_field to the text column and a label set the text
cannot match, hoping an error quotes a record's text) reaches Flower as a code and config keys
only: the deployed site leaves out every record whose "label" is not in the job's set, and the
error that it then has no records names neither a record, its number nor the site's file path
(the site's own log keeps the full reason). A simulated site keeps the full message; a policy
refusal keeps its rule."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from client.app import create_client_app
from client.public_errors import named_keys, public_failure
from common import config as config_mod
from common.errors import DataError, PolicyRefused

pytestmark = pytest.mark.unit

SECRET = "PATIENT-0 owes 1234"


def _train_message() -> Message:
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))}), "config": ConfigRecord({})})
    return make_message(meta, content=content)


def _attack(tmp_path: Path, node_config: dict) -> tuple[str, str]:
    """Run the attack job on a site; return (what Flower would forward, the site's log)."""
    data = tmp_path / "private" / "accounts.csv"
    data.parent.mkdir()
    data.write_text(f"text,label\n{SECRET},card\nsecond record,loan\n")
    exp = config_mod.load(None, {"model.name": "bert", "data.source": "csv", "data.path": "job.csv",
                                 "data.label_field": "text", "data.labels": "a,b", "data.num_sites": 1,
                                 "strategy.min_sites": 1})  # fmt: skip
    node = {"site-name": "h1", "partition-id": 0, "num-partitions": 1, **node_config}
    node = {k: str(v).replace("{data}", str(data)) for k, v in node.items()}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    app = create_client_app(fixed=exp)
    with pytest.raises(Exception) as info:  # noqa: B017
        app(message=_train_message(), context=context)
    return str(info.value), str(data)


DEPLOYED = {"data-path": "{data}", "allowed-modes": "off", "require-ledger": "false"}


def test_the_label_field_attack_leaves_no_record_content_in_what_the_site_sends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site_log = logging.getLogger("client.public_errors")  # Confide's loggers do not propagate (common/logs.py)
    site_log.addHandler(caplog.handler)
    try:
        sent, path = _attack(tmp_path, DEPLOYED)
    finally:
        site_log.removeHandler(caplog.handler)
    assert "[data-error]" in sent and "site 'h1'" in sent
    for private in (SECRET, "PATIENT", "1234", "record 0", path, "accounts.csv", "private"):
        assert private not in sent, (private, sent)
    assert "0 record(s)" in caplog.text  # the site keeps the full reason


def test_a_simulated_site_keeps_the_full_message(tmp_path: Path) -> None:
    exp_path_site = {"data-path": ""}  # a partition of the shared set: the researcher's own data
    sent, _ = _attack(tmp_path, exp_path_site)
    assert "[data-error]" not in sent and "job.csv" in sent  # the simulated site reads the job's file


def test_a_policy_refusal_keeps_its_rule_and_only_the_jobs_values() -> None:
    failure = public_failure(PolicyRefused("site 'h1' refuses: rule 'max-epsilon' (cap 8)"), "h1")
    assert str(failure) == "[policy-refused] site 'h1' refuses: rule 'max-epsilon' (cap 8)"
    assert "cap 8" in failure.detail


def test_only_known_keys_survive() -> None:
    text = ("label 'card' (record 3) of '/data/x.csv' not in the label set "
            "(config key 'data.labels', node config 'data-path')")
    assert named_keys(text) == ["data-path", "data.labels"]
    failure = public_failure(DataError(text), "h1")
    assert "card" not in str(failure) and "/data/x.csv" not in str(failure) and "record 3" not in str(failure)
    assert named_keys("column 'secret.column' and 'train.lr'") == ["train.lr"]
