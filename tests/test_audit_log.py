"""client/audit_log.py: every message a site sends is recorded on its own disk before it is sent.

Unit tests with real Flower Message objects: a reply's line (fields, hash under the documented
definition, recomputed here independently), its place beside the site's ledger, a refusal recorded
and re-raised, an unwritable log refusing before any work, a failed write stopping the reply, and
the privacy officer's table. End to end: the hashes a simulated site logged equal those recomputed
from what the server received.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from client import audit_log
from client.audit_log import audit_log_mod, main
from common.errors import PolicyRefused
from common.privacy.governance.policy import from_node_config
from common.site import SiteSpec, ledger_path
from tests.conftest import small_experiment

SIM_NODE = {"partition-id": 0, "num-partitions": 2}


def server_sha256(arrays: dict[str, np.ndarray], record: str = "arrays") -> str:
    """The documented payload hash, written out again as a server would (not the module's code)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        if a.dtype.byteorder == ">":
            a = a.byteswap().view(a.dtype.newbyteorder("<"))
        data = a.tobytes(order="C")
        shape = ",".join(str(d) for d in a.shape)
        head = (
            f'{{"dtype":"{a.dtype.str}","name":{json.dumps(name)},"nbytes":{len(data)},'
            f'"record":{json.dumps(record)},"shape":[{shape}]}}\n'
        )
        h.update(head.encode("utf-8") + data)
    return h.hexdigest()


def request(config: dict, message_type: str = "train") -> Message:
    meta = Metadata(
        run_id=7, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=3, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60, message_type=message_type,
    )  # fmt: skip
    arrays = ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))})
    return make_message(meta, content=RecordDict({"arrays": arrays, "config": ConfigRecord(config)}))


def context(node_config: dict | None = None) -> Context:
    return Context(run_id=7, node_id=3, node_config=dict(node_config or SIM_NODE), state=RecordDict(), run_config={})


UPDATE = {
    "w": np.arange(6, dtype=np.float32).reshape(2, 3),
    "bn.num_batches_tracked": np.array(5, np.int64),  # 0-d, as BatchNorm's counter
    "mask": np.array([True, False]),
}
METRICS = {"epsilon": 1.25, "weight": 1.0, "steps": 12.0, "train_loss": math.nan}


def site_training(msg: Message, ctx: Context) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in UPDATE.items()}),
            "metrics": MetricRecord(METRICS),
            "site": ConfigRecord({"name": "site-0"}),
        }
    )
    return Message(content=content, reply_to=msg)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sim_log(root: Path) -> Path:
    """A simulated site's log: beside its ledger, in the digits data set's folder of the state folder
    (the job is in each line, not in the path)."""
    return root / "confide-state" / "ledgers" / "builtin-digits" / "site-0.audit.jsonl"


@pytest.mark.unit
def test_the_payload_hash_is_the_documented_one() -> None:
    tensors = {"arrays": UPDATE}
    digest = audit_log.payload_sha256(tensors)
    assert digest == server_sha256(UPDATE)
    # pinned: a change of definition must be deliberate (and documented)
    assert audit_log.payload_sha256({"arrays": {"b": np.array([1.5], np.float32), "a": np.array(2, np.int64)}}) == (
        server_sha256({"a": np.array(2, np.int64), "b": np.array([1.5], np.float32)})
    )
    assert audit_log.payload_sha256({"arrays": {"x": np.zeros(2, np.float32)}}) == (
        "0d0d59bf196e10519fc3c0db5719d8883cca2022138225bf885db7790c2627cc"
    )
    # byte order and memory layout do not change it; a value, a name or a shape does
    big = {**UPDATE, "w": UPDATE["w"].astype(">f4")}
    fortran = {**UPDATE, "w": np.asfortranarray(UPDATE["w"])}
    assert audit_log.payload_sha256({"arrays": big}) == audit_log.payload_sha256({"arrays": fortran}) == digest
    assert audit_log.payload_sha256({"arrays": {**UPDATE, "w": UPDATE["w"] + 1}}) != digest
    assert audit_log.payload_sha256({"arrays": {**UPDATE, "w": UPDATE["w"].reshape(3, 2)}}) != digest
    assert audit_log.payload_sha256({"other": UPDATE}) != digest
    assert audit_log.payload_sha256({}) is None


@pytest.mark.unit
def test_a_train_reply_is_recorded_with_every_field_before_it_is_returned(project_root: Path) -> None:
    seen: list[list[dict]] = []

    def call_next(msg: Message, ctx: Context) -> Message:
        seen.append(lines(sim_log(project_root)))  # the log exists (empty) before the handler runs
        return site_training(msg, ctx)

    mod = audit_log_mod(small_experiment())
    reply = mod(request({"server-round": 2, "job": "42"}), context(), call_next)
    assert seen == [[]]
    [line] = lines(sim_log(project_root))
    assert reply.content["arrays"]["w"].numpy().tolist() == UPDATE["w"].tolist()
    assert line["v"] == 1 and line["time"].endswith("Z")
    assert (line["run"], line["job"], line["round"], line["type"], line["site"]) == (7, "42", 2, "train", "site-0")
    assert line["outcome"] == "sent" and line["error"] is None
    assert line["tensors"] == [
        {"record": "arrays", "name": "bn.num_batches_tracked", "shape": [], "dtype": "<i8"},
        {"record": "arrays", "name": "mask", "shape": [2], "dtype": "|b1"},
        {"record": "arrays", "name": "w", "shape": [2, 3], "dtype": "<f4"},
    ]
    assert line["bytes"] == 24 + 8 + 2
    assert line["sha256"] == server_sha256({k: v.numpy() for k, v in reply.content["arrays"].items()})
    assert line["metrics"] == {"epsilon": 1.25, "weight": 1.0, "steps": 12.0, "train_loss": "nan"}
    assert line["epsilon"] == 1.25 and line["configs"] == {"site": {"name": "site-0"}}

    # an evaluation reply (no tensors); the job falls back to the Flower run
    def evaluation(msg: Message, ctx: Context) -> Message:
        return Message(content=RecordDict({"metrics": MetricRecord({"accuracy": 0.5})}), reply_to=msg)

    mod(request({"server-round": 2}, "evaluate"), context(), evaluation)
    _, line = lines(sim_log(project_root))  # the same log: it follows the site, each line names its job
    assert (line["type"], line["job"], line["tensors"], line["bytes"], line["sha256"]) == ("evaluate", "7", [], 0, None)
    assert line["metrics"] == {"accuracy": 0.5} and line["epsilon"] is None


@pytest.mark.unit
@pytest.mark.parametrize("deployed", [False, True])
def test_the_log_lies_beside_the_sites_ledger(project_root: Path, deployed: bool) -> None:
    node = (
        {"data-path": str(project_root / "mine.npz"), "site-name": "st marys", "ledger-dir": "site-ledger"}
        if deployed
        else SIM_NODE
    )
    exp = small_experiment()
    audit_log_mod(exp)(request({"server-round": 1, "job": "5"}), context(node), site_training)
    spec = SiteSpec.from_node_config(node)
    ledger = ledger_path(exp, spec, from_node_config(node, deployed=deployed))
    expected = ledger.parent / ("st_marys.audit.jsonl" if deployed else "site-0.audit.jsonl")
    assert [p.name for p in ledger.parent.iterdir()] == [expected.name]
    assert (ledger.parent == project_root / "site-ledger") is deployed
    assert len(lines(expected)) == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("exc", "refused"),
    [(PolicyRefused("site policy refuses the job: rule 'allowed-modes'"), True), (RuntimeError("disk full"), False)],
)
def test_a_raising_handler_is_recorded_and_re_raised_unchanged(
    project_root: Path, exc: Exception, refused: bool
) -> None:
    def call_next(msg: Message, ctx: Context) -> Message:
        raise exc

    with pytest.raises(type(exc)) as raised:
        audit_log_mod(small_experiment())(request({"server-round": 3, "job": "42"}), context(), call_next)
    assert raised.value is exc
    [line] = lines(sim_log(project_root))
    assert line["outcome"] == "error" and line["round"] == 3 and line["sha256"] is None and line["tensors"] == []
    assert line["error"] == {"type": type(exc).__name__, "message": str(exc), "refused": refused, "detail": None}


class SiteFailure(Exception):
    """As client/public_errors.py's: the public text is what leaves; ``detail`` stays on the site."""

    def __init__(self, public: str, detail: str) -> None:
        super().__init__(public)
        self.detail = detail


@pytest.mark.unit
def test_a_deployed_sites_public_failure_keeps_its_full_reason_in_the_log(
    project_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exc = SiteFailure("[policy-refused] site policy refuses the job", "PolicyRefused: site policy refuses the job")

    def call_next(msg: Message, ctx: Context) -> Message:
        raise exc

    with pytest.raises(SiteFailure):
        audit_log_mod(small_experiment())(request({"server-round": 1, "job": "42"}), context(), call_next)
    [line] = lines(sim_log(project_root))
    assert line["error"] == {
        "type": "SiteFailure", "message": str(exc), "refused": True, "detail": exc.detail,
    }  # fmt: skip
    assert main(["show", str(sim_log(project_root))]) == 0
    assert "(kept on site: PolicyRefused: site policy refuses the job)" in capsys.readouterr().out


@pytest.mark.unit
def test_an_error_reply_is_recorded(project_root: Path) -> None:
    def call_next(msg: Message, ctx: Context) -> Message:
        return Message(Error(code=5, reason="budget"), reply_to=msg)

    reply = audit_log_mod(small_experiment())(request({"server-round": 1, "job": "42"}), context(), call_next)
    assert reply.has_error()
    [line] = lines(sim_log(project_root))
    assert line["outcome"] == "error" and line["error"]["message"] == "code 5: budget"


@pytest.mark.unit
def test_an_unwritable_log_refuses_the_message_before_any_work(project_root: Path) -> None:
    ledgers = project_root / "confide-state" / "ledgers"
    ledgers.mkdir(parents=True)
    (ledgers / "builtin-digits").write_text("a file where the log's folder should be")
    calls: list[int] = []

    def call_next(msg: Message, ctx: Context) -> Message:
        calls.append(1)
        return site_training(msg, ctx)

    with pytest.raises(OSError):
        audit_log_mod(small_experiment())(request({"server-round": 1, "job": "42"}), context(), call_next)
    assert calls == []


@pytest.mark.unit
def test_a_failed_write_stops_the_reply(project_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def call_next(msg: Message, ctx: Context) -> Message:
        calls.append(1)
        return site_training(msg, ctx)

    def no_space(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_log.os, "write", no_space)
    with pytest.raises(OSError, match="No space left"):
        audit_log_mod(small_experiment())(request({"server-round": 1, "job": "42"}), context(), call_next)
    monkeypatch.undo()
    assert calls == [1] and sim_log(project_root).read_text() == ""


@pytest.mark.unit
def test_show_prints_the_log_as_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "site-0.audit.jsonl"
    digests = []
    for rnd in (1, 2):
        tensors = {"arrays": {"w": np.full(3, rnd, np.float32)}}
        record = audit_log.build_record(
            run=7, job="7", server_round=rnd, message_type="train", site="site-0", tensors=tensors,
            metrics={"metrics": {"epsilon": 0.5 * rnd, "weight": 1.0}},
        )  # fmt: skip
        digests.append(record["sha256"])
        audit_log.append_record(log, record)
    refusal = PolicyRefused("site policy refuses the job: rule 'max-epsilon'")
    audit_log.append_record(
        log, audit_log.build_record(run=7, job="7", server_round=3, message_type="train", site="site-0", error=refusal)
    )
    assert main(["show", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["time", "run", "job", "round"] and len(out) == 4
    assert [row.split()[3] for row in out[1:]] == ["1", "2", "3"]
    assert all(d[:16] in row for d, row in zip(digests, out[1:3], strict=True))
    assert "0.5000" in out[1] and "epsilon=1" in out[2] and "weight=1" in out[2]
    assert "REFUSED PolicyRefused: site policy refuses the job: rule 'max-epsilon'" in out[3]

    assert main(["show", str(log), "--json"]) == 0
    assert capsys.readouterr().out == log.read_text()
    assert main(["show", str(tmp_path / "missing.audit.jsonl")]) == 2


@pytest.mark.unit
def test_a_baseline_rounds_reply_is_told_apart_from_the_models(tmp_path: Path, capsys) -> None:
    """The job's baseline rounds are numbered from 1 like the model's: the line says which part it was."""
    log = tmp_path / "site-0.audit.jsonl"
    for phase in ("baseline", ""):
        audit_log.append_record(log, audit_log.build_record(
            run=7, job="7", server_round=1, message_type="train", site="site-0", phase=phase,
            tensors={"arrays": {"w": np.zeros(2, np.float32)}},
        ))  # fmt: skip
    assert [r.get("phase") for r in lines(log)] == ["baseline", None]
    assert main(["show", str(log)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert "1 (baseline)" in rows[0] and "(baseline)" not in rows[1]


# --------------------------------------------------------------------------- end to end


@pytest.mark.sim
@pytest.mark.slow
def test_the_logged_hashes_equal_what_the_server_received(
    project_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-site, 2-round local-DP job: every training update the server accepted-checked has the
    hash, size and tensors the site logged for that (site, round), recomputed from the server's copy."""
    from server.strategy import ConfideStrategy
    from simulations.local import simulate

    received: dict[tuple[str, int], tuple[str, int, list[str]]] = {}
    original = ConfideStrategy.accept_train

    def accept_train(self, server_round, replies, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
                site = str(msg.content["site"]["name"])
                received[(site, server_round)] = (
                    server_sha256(arrays),
                    sum(a.nbytes for a in arrays.values()),
                    sorted(arrays),
                )
        return original(self, server_round, replies, *args, **kwargs)

    monkeypatch.setattr(ConfideStrategy, "accept_train", accept_train)
    exp = small_experiment(
        **{"privacy.mode": "local", "privacy.noise_multiplier": 1.0, "data.max_samples": 240, "train.lr": 0.002}
    )
    run = simulate(exp)
    logs = sorted(project_root.rglob("*.audit.jsonl"))
    assert [p.name for p in logs] == ["site-0.audit.jsonl", "site-1.audit.jsonl"]
    assert all(p.parent == project_root / "confide-state" / "ledgers" / "builtin-digits" for p in logs)
    assert all(p.with_name(p.name.removesuffix(".audit.jsonl") + ".json").is_file() for p in logs)  # the ledgers
    logged = [line for p in logs for line in lines(p)]
    train = {(r["site"], r["round"]): r for r in logged if r["type"] == "train"}
    assert len(received) == 4 and set(train) == set(received)
    for key, (digest, size, names) in received.items():
        assert train[key]["sha256"] == digest, key
        assert train[key]["bytes"] == size and sorted(t["name"] for t in train[key]["tensors"]) == names
        assert train[key]["outcome"] == "sent" and train[key]["epsilon"] > 0
    # the epsilon the site logged is the one the run reports
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for site in ("site-0", "site-1"):
        assert train[(site, 2)]["epsilon"] == pytest.approx(last["sites"][site]["train"]["epsilon"])
    # withheld site metrics: no evaluation is asked for, so the training replies are all that left
    assert len(logged) == 4 and all(r["outcome"] == "sent" for r in logged)

    assert main(["show", str(logs[0])]) == 0
    table = capsys.readouterr().out
    assert all(train[("site-0", rnd)]["sha256"][:16] in table for rnd in (1, 2))
