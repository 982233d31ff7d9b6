"""DP randomness on a deployed site (common/privacy/mechanism/randomness.py, client/app.py): once a process
serves a deployed site, study seeds can neither be entered nor used, whichever comes first, so a
site's noise always comes from the OS's entropy. Simulated sites keep the study switch."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from common.privacy.mechanism import randomness
from common.privacy.mechanism.randomness import StudySeedsForbidden, secret_generator, study_noise_seeds

pytestmark = pytest.mark.unit


def test_study_seeds_apply_in_a_simulation_process() -> None:
    with study_noise_seeds(lambda: 7):
        a = secret_generator().initial_seed()
    assert a == 7 and secret_generator().initial_seed() != 7


def test_a_deployed_process_refuses_study_seeds_entered_after_or_before() -> None:
    with study_noise_seeds(lambda: 7):  # a mod entered it before the site's handler ran
        randomness.forbid_study_seeds()
        with pytest.raises(StudySeedsForbidden):
            secret_generator()
    with pytest.raises(StudySeedsForbidden), study_noise_seeds(lambda: 7):
        pass
    assert secret_generator().initial_seed() != 7


def test_the_client_app_forbids_study_seeds_for_a_deployed_site_before_reading_anything(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import _setup

    for field, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):  # Flower stamps new messages
        monkeypatch.setattr(TaskIdentity, field, value)
    from tests.conftest import small_experiment

    node = {"site-name": "h1", "data-path": str(tmp_path / "missing.npz")}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    msg = Message(content=RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({"labels": ["0", "1"]})}),
                  dst_node_id=1, message_type="train")  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017  (the site's data is missing; what matters is the lock)
        _setup(msg, context, small_experiment())
    assert randomness._FORBIDDEN
    simulated = {"partition-id": 0, "num-partitions": 2}
    randomness._FORBIDDEN = False
    context = Context(run_id=1, node_id=1, node_config=simulated, state=RecordDict(), run_config={})
    with pytest.raises(Exception):  # noqa: B017
        _setup(msg, context, small_experiment())
    assert not randomness._FORBIDDEN
