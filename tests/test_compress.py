"""Compressed updates (``transport``): common/compress.py, client/compress_mod.py and the
coordinator's decoding in server/strategy.py (and central DP over it).

Expected values are computed by hand from the inputs: int8 scales as max|x|/127 per tensor or
block, payload sizes from tensor sizes, the k largest magnitudes picked out by eye. One small
simulation (ResNet-8 on digits, 2 sites, 2 rounds) checks the bytes recorded in metrics.jsonl
against the model's tensor sizes, and the accuracy against the same run in float32."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.compress_mod import RESIDUAL_KEY, compress_mod
from common import compress
from common import config as config_mod
from common.config import TransportConfig
from common.errors import ConfigError, UpdateError
from common.privacy.governance.central import CLIENT_CLIPPING_KEY
from server.recorder import RoundRecorder
from server.strategy import build_strategy
from tests.conftest import small_experiment

T = TransportConfig
RNG = np.random.default_rng(0)
REF = {"w": RNG.normal(size=(6, 10)).astype(np.float32), "n": np.array(3, np.int64)}


# -- pure encode/decode ------------------------------------------------------------------------------


@pytest.mark.unit
def test_int8_per_tensor_error_is_at_most_half_a_step() -> None:
    """One scale max|x|/127; every decoded element within scale/2 (+ float32 rounding of q*scale)."""
    x = RNG.normal(size=(7, 13)).astype(np.float32)
    q, scale = compress.int8_encode(x)
    assert q.dtype == np.int8 and q.shape == x.shape and scale.shape == (1,)
    assert scale[0] == np.float32(np.abs(x).max() / 127)
    err = np.abs(compress.int8_decode(q, scale) - x)
    assert (err <= scale[0] / 2 + 1e-6 * np.abs(x)).all()
    assert np.abs(q).max() == 127  # the largest element uses the whole range


@pytest.mark.unit
def test_int8_per_block_has_one_scale_per_block() -> None:
    """Blocks of 4 over 10 elements: 3 scales (the last block holds 2), each its own max/127."""
    x = np.array([1, -2, 3, 4, 100, 0, 0, -50, 0.5, -0.25], np.float32)
    q, scale = compress.int8_encode(x, block_size=4)
    assert scale.tolist() == pytest.approx([4 / 127, 100 / 127, 0.5 / 127])
    decoded = compress.int8_decode(q, scale, block_size=4)
    steps = np.repeat(scale, 4)[: x.size]
    assert (np.abs(decoded - x) <= steps / 2 + 1e-6).all()
    assert decoded[8] == pytest.approx(0.5) and decoded[9] == pytest.approx(-0.25, abs=0.5 / 127 / 2)


@pytest.mark.unit
def test_fp16_is_exact_for_representable_values_and_bf16_matches_torch() -> None:
    exact = np.array([0.0, 1.0, -2.5, 0.15625, 1024.0, -3.0 / 1024], np.float32)
    fp16 = compress.encode_tensor(exact, T("fp16"))
    assert fp16[""].dtype == np.float16 and (compress.decode_tensor(fp16, exact.shape, T("fp16")) == exact).all()
    bf16 = compress.encode_tensor(exact, T("bf16"))
    assert bf16[""].dtype == np.uint16 and (compress.decode_tensor(bf16, exact.shape, T("bf16")) == exact).all()
    x = RNG.normal(size=1000).astype(np.float32)
    expected = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    assert (compress.from_bf16(compress.to_bf16(x)) == expected).all()
    assert (np.abs(compress.from_bf16(compress.to_bf16(x)) - x) <= np.abs(x) * 2.0**-8).all()


@pytest.mark.unit
def test_topk_keeps_exactly_the_k_largest_magnitudes() -> None:
    x = np.array([0.1, -5.0, 3.0, 0.2, -0.05, 4.0], np.float32)
    parts = compress.encode_tensor(x, T(topk=0.5))  # k = ceil(0.5 * 6) = 3
    assert parts[compress.IDX].tolist() == [1, 2, 5] and parts[""].tolist() == [-5.0, 3.0, 4.0]
    assert compress.decode_tensor(parts, x.shape, T(topk=0.5)).tolist() == [0, -5.0, 3.0, 0, 0, 4.0]
    assert compress.topk_count(1000, 0.01) == 10 and compress.topk_count(5, 0.01) == 1
    # a fraction that does not divide the size rounds up: at least that share of the update is sent
    assert compress.topk_count(10, 0.25) == 3 and compress.topk_count(7, 0.5) == 4
    parts = compress.encode_tensor(x, T(topk=0.4))  # ceil(0.4 * 6) = ceil(2.4) = 3, not 2
    assert parts[compress.IDX].tolist() == [1, 2, 5]


@pytest.mark.unit
def test_error_feedback_sends_over_rounds_what_the_updates_sum_to() -> None:
    """Top-1 of 4 elements, float32 values: what is not sent is carried, so after every round
    sum(decoded so far) + residual == sum(updates so far), and each element is sent eventually."""
    t = T(topk=0.25)
    ref = {"w": np.zeros(4, np.float32)}
    updates = [np.array(u, np.float32) for u in ([4, 3, 2, 1], [0, 1, 1, 1], [1, 0, 2, 0], [0, 0, 0, 0])]
    residual, sent, total = None, np.zeros(4, np.float32), np.zeros(4, np.float32)
    for u in updates:
        payload, residual = compress.encode_update({"w": u}, ref, t, residual)
        assert payload["w::idx"].size == 1
        sent += compress.decode_update(payload, ref, t, "site 'a'")["w"]
        total += u
        assert np.allclose(sent + residual["w"], total, atol=1e-6)
    # carried in: -, [0,3,2,1], [0,0,3,2], [1,0,0,2]; sent in turn: 4 (w0), 4 (w1), 5 (w2), 2 (w3)
    assert sent.tolist() == [4, 4, 5, 2] and residual["w"].tolist() == [1, 0, 0, 0]


@pytest.mark.unit
def test_statistics_travel_dense_under_topk() -> None:
    """BatchNorm's running statistics (the coordinator names them in the train config) are quantised
    but never sparsified: a model whose weights moved and whose statistics mostly did not would
    normalise with the wrong scale (ResNet-18 on digits fell to chance at top-10% before this)."""
    t = T("int8", topk=0.1)
    ref = {**REF, "rv": np.ones(8, np.float32)}
    new = {"w": REF["w"] + 1, "n": np.array(3), "rv": np.linspace(1, 2, 8, dtype=np.float32)}
    payload, _ = compress.encode_update(new, ref, t, dense=frozenset({"rv"}))
    assert payload["rv"].shape == (8,) and "rv::idx" not in payload and payload["w"].shape == (6,)
    back = compress.decode_update(payload, ref, t, "site 'a'", dense=frozenset({"rv"}))
    assert np.abs(back["rv"] - new["rv"]).max() <= payload["rv::scale"][0] / 2 + 1e-6
    with pytest.raises(UpdateError, match="lacks tensor 'rv::idx'"):
        compress.decode_update(payload, ref, t, "site 'a'")


@pytest.mark.unit
def test_update_round_trip_adds_to_the_reference_and_keeps_integers() -> None:
    t = T("int8", block_size=16)
    new = {"w": REF["w"] + 0.01 * RNG.normal(size=(6, 10)).astype(np.float32), "n": np.array(9, np.int64)}
    payload, _ = compress.encode_update(new, REF, t)
    assert sorted(payload) == ["n", "w", "w::scale"] and payload["w::scale"].shape == (4,)  # ceil(60/16)
    assert compress.payload_bytes(payload) == 60 * 1 + 4 * 4 + 8
    back = compress.decode_update(payload, REF, t, "site 'a'")
    assert back["n"] == 9 and back["w"].dtype == np.float32
    assert np.abs(back["w"] - new["w"]).max() <= payload["w::scale"].max() / 2 + 1e-6


@pytest.mark.unit
def test_broadcast_round_trip_is_dense_and_self_describing() -> None:
    t = T("int8", block_size=8, topk=0.1, broadcast=True)  # top-k is for updates, never the model
    payload = compress.encode_weights(REF, t)
    assert payload["w"].shape == (6, 10) and payload["w::scale"].shape == (8,) and payload["n"].dtype == np.int64
    back = compress.decode_weights(payload, t, "the server")
    assert np.abs(back["w"] - REF["w"]).max() <= payload["w::scale"].max() / 2 + 1e-6
    with pytest.raises(UpdateError, match="unexpected tensor 'w::idx'"):
        compress.decode_weights({**payload, "w::idx": np.zeros(6, np.int32)}, t, "the server")


@pytest.mark.unit
def test_a_non_finite_update_stays_non_finite_so_the_coordinator_refuses_it() -> None:
    new = {"w": np.full((6, 10), np.nan, np.float32), "n": np.array(3)}
    for t in (T("int8"), T("fp16"), T("int8", topk=0.05)):
        payload, residual = compress.encode_update(new, REF, t)
        assert not np.isfinite(compress.decode_update(payload, REF, t, "site 'a'")["w"]).all()
        assert residual == {}  # not carried into the next round


@pytest.mark.unit
def test_decoded_update_stays_within_the_clipping_norm() -> None:
    """Client-side clipping (central DP): whatever the quantisation rounds, the decoded update's
    norm is at most the clipping norm the coordinator verifies."""
    for seed in range(20):
        rng = np.random.default_rng(seed)
        new = {"w": REF["w"] + rng.normal(size=(6, 10)).astype(np.float32), "n": np.array(3)}
        for t in (T("int8"), T("bf16"), T("int8", block_size=4, topk=0.5)):
            payload, _ = compress.encode_update(new, REF, t, max_norm=0.5)
            update = compress.decode_update(payload, REF, t, "site 'a'")["w"] - REF["w"]
            assert np.linalg.norm(update.astype(np.float64)) <= 0.5 * (1 + 1e-6)


GOOD = compress.encode_update({"w": REF["w"] + 1, "n": np.array(3)}, REF, T("int8", topk=0.1))[0]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"w::scale": None}, "lacks tensor 'w::scale'"),
        ({"w::bad": np.zeros(1)}, "unexpected tensor 'w::bad'"),
        ({"w": GOOD["w"].astype(np.float32)}, r"tensor 'w': values .* dtype float32, expected int8"),
        ({"w": np.zeros(7, np.int8)}, r"tensor 'w': values .* shape \(7,\), expected \(6,\)"),
        ({"w::idx": np.array([0, 1, 2, 3, 4, 60], np.int32)}, "tensor 'w' has top-k indices outside 0..59"),
        ({"w::idx": np.array([0, 1, 1, 3, 4, 5], np.int32)}, "tensor 'w' has repeated top-k indices"),
        ({"w::idx": np.arange(6, dtype=np.int64)}, r"tensor 'w': indices have dtype int64"),
        ({"w::scale": np.array([-1.0], np.float32)}, "tensor 'w' has negative int8 scales"),
    ],
)
def test_a_malformed_payload_is_refused_naming_site_and_tensor(change: dict, message: str) -> None:
    payload = {k: v for k, v in ({**GOOD, **change}).items() if v is not None}
    with pytest.raises(UpdateError, match=message) as info:
        compress.decode_update(payload, REF, T("int8", topk=0.1), "site 'evil'")
    assert "site 'evil'" in str(info.value)


@pytest.mark.unit
def test_options_that_do_nothing_are_refused() -> None:
    with pytest.raises(ConfigError, match="transport.block_size"):
        T("fp16", block_size=64)
    with pytest.raises(ConfigError, match="transport.broadcast"):
        T(broadcast=True)


# -- the site's mod ---------------------------------------------------------------------------------


def message(arrays: dict, config: dict | None = None, kind: str = "train") -> Message:
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60, message_type=kind,
    )  # fmt: skip
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "config": ConfigRecord(config or {"server-round": 1})})  # fmt: skip
    return make_message(meta, content=content)


def site(step: dict[str, np.ndarray], seen: list | None = None):  # noqa: ANN201
    """A site that adds ``step`` to the float weights it received (and notes what it received)."""

    def app(msg: Message, context: Context) -> Message:
        got = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        if seen is not None:
            seen.append(got)
        new = {k: v + step[k] if k in step else v for k, v in got.items()}
        arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in new.items()})
        return Message(content=RecordDict({"arrays": arrays, "metrics": MetricRecord({"weight": 1.0})}), reply_to=msg)

    return app


def context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def experiment(**transport: object) -> config_mod.ExperimentConfig:
    return config_mod.load(None, {f"transport.{k}": v for k, v in transport.items()})


@pytest.mark.unit
def test_the_default_transport_passes_messages_untouched() -> None:
    msg = message(REF)
    reply = compress_mod(experiment())(msg, context(), site({"w": np.ones((6, 10), np.float32)}))
    assert sorted(reply.content["arrays"].keys()) == ["n", "w"]
    assert reply.content["arrays"]["w"].numpy().dtype == np.float32


@pytest.mark.unit
def test_the_site_sends_the_encoded_update_and_carries_its_residual_between_rounds() -> None:
    """Top-10% of 60 elements = 6 per round; the residual lives in Context.state, so two rounds
    send what the two updates sum to, less the residual left after the second."""
    mod, ctx, t = compress_mod(experiment(topk=0.1)), context(), T(topk=0.1)
    steps = [RNG.normal(size=(6, 10)).astype(np.float32) for _ in range(2)]
    sent = np.zeros((6, 10), np.float32)
    for step in steps:
        reply = mod(message(REF), ctx, site({"w": step}))
        payload = {k: v.numpy() for k, v in reply.content["arrays"].items()}
        assert payload["w"].shape == (6,) and payload["w::idx"].dtype == np.int32
        sent += compress.decode_update(payload, REF, t, "site 'a'")["w"] - REF["w"]
    residual = ctx.state.array_records[RESIDUAL_KEY]["w"].numpy()
    assert np.allclose(sent + residual, steps[0] + steps[1], atol=1e-5)


@pytest.mark.unit
def test_a_quantised_broadcast_is_decoded_before_the_app_sees_it() -> None:
    t = T("int8", block_size=16, broadcast=True)
    encoded = compress.encode_weights(REF, t)
    seen: list = []
    reply = compress_mod(experiment(quantize="int8", block_size=16, broadcast=True))(
        message(encoded), context(), site({"w": np.ones((6, 10), np.float32)}, seen)
    )
    decoded = compress.decode_weights(encoded, t, "the server")
    assert sorted(seen[0]) == ["n", "w"] and (seen[0]["w"] == decoded["w"]).all()
    payload = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    back = compress.decode_update(payload, decoded, t, "site 'a'")  # the update is against the decoded model
    assert np.allclose(back["w"], decoded["w"] + 1, atol=1 / 127)


@pytest.mark.unit
def test_client_side_clipping_holds_after_compression() -> None:
    msg = message(REF, {"server-round": 1, CLIENT_CLIPPING_KEY: "fixed", KEY_CLIPPING_NORM: 0.5})
    reply = compress_mod(experiment(quantize="int8"))(msg, context(), site({"w": np.full((6, 10), 0.1, np.float32)}))
    payload = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    update = compress.decode_update(payload, REF, T("int8"), "site 'a'")["w"] - REF["w"]
    assert np.linalg.norm(update) <= 0.5 * (1 + 1e-6)


# -- the coordinator ---------------------------------------------------------------------------------


@pytest.fixture
def server_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower builds a ServerApp's messages for the run its process belongs to."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class Grid:
    """What Flower's FedAvg.configure_train asks of a grid: the connected nodes."""

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def reply(node: int, name: str, arrays: dict) -> Message:
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=node, dst_node_id=0, reply_to_message_id="x",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict({"metrics": MetricRecord({"weight": 1.0, "num-examples": 1.0}),
                          "site": ConfigRecord({"name": name}),
                          "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})})  # fmt: skip
    return make_message(meta, content=content)


def coordinator(tmp_path: Path, **keys: object):  # noqa: ANN201
    exp = config_mod.load(None, {"data.num_sites": 2, "strategy.min_sites": 1, **keys})
    recorder = RoundRecorder(None)
    return build_strategy(exp, REF, recorder, "1"), recorder, exp.transport


@pytest.mark.unit
def test_the_coordinator_aggregates_decoded_updates_and_records_received_bytes(
    tmp_path: Path, server_process: None
) -> None:
    """Broadcast int8 per block of 16: the sites get 60 int8 + 4 scales (+ the integer buffer); each
    sends 60 int8 + 4 scales + 8 bytes, 4.6x fewer than 248 float32 bytes; the aggregate is the
    decoded broadcast plus the mean decoded update; a malformed payload is excluded by name."""
    keys = {"transport.quantize": "int8", "transport.block_size": 16, "transport.broadcast": True}
    s, rec, t = coordinator(tmp_path, **keys)
    sent = list(s.configure_train(1, ArrayRecord({k: Array(v) for k, v in REF.items()}), ConfigRecord({}), Grid()))
    payload = {k: v.numpy() for k, v in sent[0].content["arrays"].items()}
    assert payload["w"].dtype == np.int8 and payload["w::scale"].shape == (4,)
    assert rec.current.bytes_down_per_site == sent[0].content["arrays"].count_bytes()
    decoded = compress.decode_weights(payload, t, "the server")
    assert all((s.global_arrays[k] == decoded[k]).all() for k in REF)
    ups = [decoded["w"] + 0.1, decoded["w"] - 0.3]
    good = [compress.encode_update({"w": u, "n": np.array(5)}, decoded, t)[0] for u in ups]
    evil = {**good[0], "w::scale": np.ones(3, np.float32)}
    arrays, _ = s.aggregate_train(1, [reply(1, "a", good[0]), reply(2, "b", good[1]), reply(3, "evil", evil)])
    assert np.allclose(arrays["w"].numpy(), decoded["w"] - 0.1, atol=0.3 / 127)
    (failure,) = rec.current.failures
    assert failure["site"] == "evil" and "tensor 'w': scales have shape (3,), expected (4,)" in failure["reason"]
    assert [rec.current.train[n]["bytes_up"] for n in "ab"] == [60 + 4 * 4 + 8] * 2
    assert 248 / (60 + 16 + 8) > 2.9  # ResNet-sized tensors make the scales negligible: see the simulation


@pytest.mark.unit
def test_the_coordinator_names_the_statistics_sites_send_dense(server_process: None) -> None:
    """With top-k the train config lists the float buffers (BatchNorm statistics) and a reply that
    sends them dense is accepted; without top-k the config is as before."""
    ref = {**REF, "rv": np.ones(4, np.float32)}
    for topk, listed in ((0.0, None), (0.1, ["rv"])):  # the last one (top-k) is used below
        exp = config_mod.load(None, {"data.num_sites": 2, "strategy.min_sites": 1, "transport.quantize": "int8",
                                     "transport.topk": topk})  # fmt: skip
        s = build_strategy(exp, ref, RoundRecorder(None), "1", buffers=frozenset({"rv"}))
        msgs = list(s.configure_train(1, ArrayRecord({k: Array(v) for k, v in ref.items()}), ConfigRecord({}), Grid()))
        assert msgs[0].content["config"].get(compress.DENSE_KEY) == listed
    new = {"w": REF["w"] + 1, "n": np.array(3), "rv": np.full(4, 2.0, np.float32)}
    payload, _ = compress.encode_update(new, ref, exp.transport, dense=frozenset({"rv"}))
    arrays, _ = s.aggregate_train(1, [reply(1, "a", payload)])
    assert np.allclose(arrays["rv"].numpy(), 2.0)


@pytest.mark.unit
def test_central_dp_verifies_the_clipping_norm_on_the_decoded_update(tmp_path: Path, server_process: None) -> None:
    """Client-side clipping with a quantised broadcast: the site clips against the decoded model it
    received, the coordinator measures the decoded update against that same model, and accepts it."""
    keys = {"privacy.mode": "central", "privacy.noise_multiplier": 1e-9, "privacy.clipping_norm": 0.5,
            "privacy.clip_side": "client", "privacy.central_ledger": str(tmp_path / "c.json"),
            "transport.quantize": "int8", "transport.broadcast": True}  # fmt: skip
    dp, rec, t = coordinator(tmp_path, **keys)
    msgs = list(dp.configure_train(1, ArrayRecord({k: Array(v) for k, v in REF.items()}), ConfigRecord({}), Grid()))
    config = dict(msgs[0].content["config"])
    replies = []
    for node in (1, 2):
        seen: list = []
        msg = message({k: v.numpy() for k, v in msgs[0].content["arrays"].items()}, config)
        out = compress_mod(config_mod.load(None, keys))(msg, context(), site({"w": np.full((6, 10), 1.0)}, seen))
        replies.append(reply(node, f"s{node}", {k: v.numpy() for k, v in out.content["arrays"].items()}))
    arrays, _ = dp.aggregate_train(1, replies)
    assert rec.current.failures == [] and sorted(rec.current.train) == ["s1", "s2"]
    moved = arrays["w"].numpy() - seen[0]["w"]
    assert np.linalg.norm(moved) <= 0.5 * (1 + 1e-4)  # the mean of two clipped updates, noise ~0


# -- a simulation ------------------------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.slow
def test_int8_cuts_the_recorded_bytes_by_the_expected_factor_and_keeps_accuracy() -> None:
    """ResNet-8 on digits, 2 sites, 2 rounds, float32 then int8 (per tensor) with the broadcast
    quantised too: bytes_up per site is exactly sum(size) int8 + 4 bytes per float tensor + the
    int64 BatchNorm counters (about 3.9x fewer than float32), bytes_down about as much fewer, and the
    final test accuracy within 5 points of float32's."""
    from common.models import build_model
    from common.weights import get_weights
    from simulations.local import simulate

    keys = {"model.name": "resnet8", "train.lr": 0.01, "data.max_samples": 300}
    runs = [simulate(small_experiment(**keys, **extra)) for extra in
            ({}, {"transport.quantize": "int8", "transport.broadcast": True})]  # fmt: skip
    rounds = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()][1:] for r in runs]
    exp = small_experiment(**keys)
    weights = get_weights(build_model(exp, num_labels=10))
    floats = [v for v in weights.values() if np.issubdtype(v.dtype, np.floating)]
    plain = sum(v.nbytes for v in weights.values())
    packed = sum(v.size + 4 for v in floats) + sum(v.nbytes for v in weights.values() if v.dtype.kind in "iu")
    for r32, r8 in zip(*rounds, strict=True):
        assert {s["train"]["bytes_up"] for s in r32["sites"].values()} == {plain}
        assert {s["train"]["bytes_up"] for s in r8["sites"].values()} == {packed}
        assert r32["bytes_down_per_site"] / r8["bytes_down_per_site"] > 3.5
    assert plain / packed > 3.8
    accuracy = [r[-1]["central"]["accuracy"] for r in rounds]
    assert abs(accuracy[0] - accuracy[1]) <= 0.05 and not math.isnan(accuracy[1])
