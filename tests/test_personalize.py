"""Per-site personalisation (strategy.personalize: head, strategy.local_finetune).

Proves that a personalised site releases its body only (never a head tensor), keeps its own head in
its state folder between rounds and across a resumed job (a new process), that the coordinator
checks and aggregates body-only updates and keeps its own head copy out of what it sends, and that
the config refuses the settings that cannot work, each in one line naming the key.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from common import config as config_mod
from common import site as site_mod
from common.data import LabelSet
from common.errors import ConfigError
from server.loop import shared_part, with_kept
from server.recorder import RoundRecorder
from server.strategy import build_strategy

pytestmark = pytest.mark.unit

DIGITS = LabelSet(tuple(str(i) for i in range(10)))
TINY = {
    "model.name": "resnet8",
    "model.in_channels": 1,
    "data.num_sites": 2,
    "data.max_samples": 120,
    "train.batch_size": 16,
    "train.max_steps": 2,
    "strategy.rounds": 2,
    "strategy.personalize": "head",
}


def experiment(**overrides: object) -> config_mod.ExperimentConfig:
    return config_mod.load(None, {**TINY, **overrides})


def runtime(exp: config_mod.ExperimentConfig, pid: int) -> site_mod.SiteRuntime:
    spec = site_mod.SiteSpec.from_node_config({"partition-id": pid, "num-partitions": exp.data.num_sites})
    return site_mod.site_runtime(exp, spec, DIGITS)


def body_from(rt: site_mod.SiteRuntime) -> dict[str, np.ndarray]:
    """What the coordinator sends a personalised site: every exchanged tensor but the head (fc.*)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in rt.model.state_dict().items() if not k.startswith("fc.")}


def head_of(rt: site_mod.SiteRuntime) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in rt.model.state_dict().items() if k.startswith("fc.")}


@pytest.fixture(autouse=True)
def fresh_site_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new site process: no cached data or model."""
    from collections import OrderedDict

    monkeypatch.setattr(site_mod, "_CACHE", OrderedDict())
    monkeypatch.setattr(site_mod, "_MODELS", OrderedDict())
    monkeypatch.setattr(site_mod, "_INITIAL_HEADS", {})


def test_the_released_update_carries_the_body_and_never_the_head() -> None:
    """resnet8's head is fc.weight and fc.bias; the update a trained site releases has every other
    exchanged tensor and neither of those."""
    exp = experiment()
    rt = runtime(exp, 0)
    everything = set(rt.model.state_dict())
    site_mod.load_global(exp, rt, body_from(rt), run_id="7")
    site_mod.train_round(exp, rt, 1, run_id="7")
    released = set(site_mod.released_state(exp, rt))
    assert {"fc.weight", "fc.bias"} <= everything
    assert released == everything - {"fc.weight", "fc.bias"}
    plain = config_mod.load(None, {**TINY, "strategy.personalize": "off"})
    assert set(site_mod.released_state(plain, rt)) == everything  # off: the whole model, as before


def test_the_site_keeps_its_head_between_rounds_and_across_a_resumed_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """After round 1 the site's trained head is in its state folder. Round 2 (after another site used
    the shared model) and a new process serving the same job get that head back exactly; another
    job starts from the model's initial head."""
    exp = experiment()
    rt0 = runtime(exp, 0)
    initial = head_of(rt0)
    body = body_from(rt0)
    site_mod.load_global(exp, rt0, body, run_id="7")
    site_mod.train_round(exp, rt0, 1, run_id="7")
    trained = head_of(rt0)
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)  # training moved the head
    rt1 = runtime(exp, 1)  # the same process's model, now site 1's
    assert rt1.model is rt0.model
    site_mod.load_global(exp, rt1, body, run_id="7")
    site_mod.train_round(exp, rt1, 1, run_id="7")
    assert any(not torch.equal(head_of(rt1)[k], trained[k]) for k in trained)

    site_mod.load_global(exp, rt0, body, run_id="7")  # round 2 at site 0
    assert all(torch.equal(head_of(rt0)[k], trained[k]) for k in trained)

    from collections import OrderedDict

    monkeypatch.setattr(site_mod, "_CACHE", OrderedDict())  # a new site process (a resumed job)
    monkeypatch.setattr(site_mod, "_MODELS", OrderedDict())
    again = runtime(exp, 0)
    assert again.model is not rt0.model
    site_mod.load_global(exp, again, body, run_id="7")
    assert all(torch.equal(head_of(again)[k], trained[k]) for k in trained)
    site_mod.load_global(exp, again, body, run_id="8")  # another job: the initial head
    assert all(torch.equal(head_of(again)[k], initial[k]) for k in initial)


def test_a_personalised_site_refuses_a_head_from_the_coordinator() -> None:
    """The site checks what it is sent against its body: a head tensor in it is an unexpected tensor."""
    from common.errors import UpdateError

    exp = experiment()
    rt = runtime(exp, 0)
    full = {k: v.detach().cpu().numpy() for k, v in rt.model.state_dict().items()}
    with pytest.raises(UpdateError, match="unexpected tensor 'fc"):
        site_mod.load_global(exp, rt, full, run_id="7")


# --------------------------------------------------------------------------- the coordinator

REF = {
    "conv.weight": np.zeros((2, 2), np.float32),
    "fc.weight": np.full((3, 2), 9.0, np.float32),
    "fc.bias": np.full((3,), 9.0, np.float32),
}


def reply(node: int, site: str, weights: dict, n: int) -> object:
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=node, dst_node_id=0, reply_to_message_id="x",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict(
        {
            "metrics": MetricRecord({"weight": n, "num-examples": n, "train_seconds": 1.0}),
            "site": ConfigRecord({"name": site}),
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()}),
        }
    )
    return make_message(meta, content=content)


def personalised_strategy() -> tuple[object, RoundRecorder]:
    exp = config_mod.load(None, {"strategy.personalize": "head", "data.num_sites": 3, "strategy.min_sites": 1})
    recorder = RoundRecorder(None)
    strategy = build_strategy(exp, REF, recorder)
    recorder.begin(1, bytes_down=0)
    return strategy, recorder


def test_the_coordinator_aggregates_body_only_updates_and_keeps_its_head_aside() -> None:
    """Two body-only updates, weights 30 and 10, of 1 and 5: the weighted mean is 2. A reply that
    carries a head is excluded, naming the site and the tensor. The new global model is that mean
    with the coordinator's own head (9s) as it was; what the sites are sent has no head."""
    strategy, recorder = personalised_strategy()
    assert strategy.site_owned == {"fc.weight", "fc.bias"}
    body = lambda v: {"conv.weight": np.full((2, 2), v, np.float32)}  # noqa: E731
    leaky = {**body(100.0), "fc.weight": np.ones((3, 2), np.float32), "fc.bias": np.ones(3, np.float32)}
    arrays, _ = strategy.aggregate_train(
        1, [reply(1, "a", body(1.0), 30), reply(2, "b", body(5.0), 10), reply(3, "leaky", leaky, 10)]
    )
    assert set(arrays.keys()) == {"conv.weight"}
    assert np.allclose(arrays["conv.weight"].numpy(), 2.0)
    (failure,) = recorder.current.failures
    assert failure["site"] == "leaky" and "unexpected tensor 'fc." in failure["reason"]

    previous = ArrayRecord({k: Array(v) for k, v in REF.items()})
    merged = with_kept(arrays, previous, strategy.site_owned)
    assert list(merged.keys()) == list(REF)
    assert np.allclose(merged["conv.weight"].numpy(), 2.0) and np.all(merged["fc.weight"].numpy() == 9.0)
    assert list(shared_part(merged, strategy.site_owned).keys()) == ["conv.weight"]
    assert shared_part(merged, frozenset()) is merged  # not personalised: everything is sent


# --------------------------------------------------------------------------- config refusals


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"strategy.personalize": "body"}, ("strategy.personalize", "head")),
        ({"strategy.local_finetune": -1}, ("strategy.local_finetune", ">= 0")),
        ({"strategy.personalize": "head", "model.name": "linear"}, ("strategy.personalize", "'linear'")),
        ({"strategy.personalize": "head", "secagg.enabled": True}, ("strategy.personalize", "secagg")),
        (
            {"strategy.personalize": "head", "privacy.mode": "central", "privacy.noise_multiplier": 1.0},
            ("strategy.personalize", "central"),
        ),
        (
            {"strategy.local_finetune": 2, "privacy.mode": "local", "privacy.noise_multiplier": 1.0},
            ("strategy.local_finetune", "privacy.mode"),
        ),
        (
            {"strategy.local_finetune": 1, "strategy.fraction_evaluate": 0.5, "data.num_sites": 4},
            ("strategy.local_finetune", "fraction_evaluate"),
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line(overrides: dict, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as refused:
        config_mod.load(None, {"data.num_sites": 3, **overrides})
    text = str(refused.value)
    assert "\n" not in text and all(f in text for f in fragments), text


def test_local_dp_with_a_personal_head_is_accepted() -> None:
    """Under local DP the head trains inside DP-SGD with the body: nothing extra to refuse."""
    exp = config_mod.load(
        None, {"strategy.personalize": "head", "privacy.mode": "local", "privacy.noise_multiplier": 1.0}
    )
    assert exp.strategy.personalize == "head"


def test_under_local_dp_the_head_trains_inside_dp_sgd_and_the_ledger_charges_the_same() -> None:
    """A local-DP round of a personalised site spends exactly what the same round of a plain site
    spends (the head is trained by the same DP-SGD steps: nothing extra, nothing skipped), its
    ledger records the round, and its update still carries no head."""
    dp = {"privacy.mode": "local", "privacy.noise_multiplier": 1.0, "strategy.rounds": 1}
    spent = {}
    for mode, job in (("head", "11"), ("off", "12")):
        exp = experiment(**dp, **{"strategy.personalize": mode})
        rt = runtime(exp, 0)
        weights = (
            body_from(rt) if mode == "head" else {k: v.detach().cpu().numpy() for k, v in rt.model.state_dict().items()}
        )
        site_mod.load_global(exp, rt, weights, run_id=job)
        metrics = site_mod.train_round(exp, rt, 1, run_id=job)
        spent[mode] = (metrics["epsilon_run"], metrics["steps"])
        ledger = site_mod.ledger_path(exp, rt.spec, site_mod.SIMULATION)
        assert job in ledger.read_text()  # the round is in the site's ledger under its job
        if mode == "head":
            assert not any(k.startswith("fc.") for k in site_mod.released_state(exp, rt))
    assert spent["head"][1] > 0 and spent["head"] == pytest.approx(spent["off"])


def test_the_model_card_lists_per_site_figures_only_where_the_sites_released_them(tmp_path) -> None:  # noqa: ANN001
    """A personalised job's card has a Personalisation table of what the sites released (0.7 local-only,
    0.9 personalised, no global figure beside a personal head) and, where they released no held-out
    metrics (DP sites withholding them), says the figures are withheld instead of showing any."""
    from common.export import write_model_card

    labels = LabelSet(("a", "b"))
    exp = experiment()
    released = {"site-0": {"accuracy": 0.9, "num_examples": 10, "local_only_accuracy": 0.7}}
    write_model_card(tmp_path, exp, labels, released, {}, ["no DP"], "", [])
    section = (tmp_path / "MODEL_CARD.md").read_text().split("## Personalisation")[1].split("## ")[0]
    assert "| site-0 | 0.7000 | n/a | 0.9000 |" in section and "withheld" not in section

    dp = experiment(**{"privacy.mode": "local", "privacy.noise_multiplier": 1.0})
    write_model_card(tmp_path, dp, labels, {"site-0": {"weight": 1.0}}, {}, ["DP"], "", [])
    section = (tmp_path / "MODEL_CARD.md").read_text().split("## Personalisation")[1].split("## ")[0]
    assert "withheld" in section and "| site-0 |" not in section
