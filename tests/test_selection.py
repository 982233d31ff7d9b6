"""server/selection.py's ``tail_average``: the export is the mean of the global models of the last
``strategy.tail_rounds`` rounds (here equal to the hand-computed mean of those rounds' weights,
with the dtype of each tensor kept); a run stopped after any round and resumed from its written and
re-read checkpoint exports the same mean as one never stopped; a resume that would average other
rounds than the checkpoint summed is refused; a bad ``strategy.tail_rounds`` is refused in one
line naming the key; 0 means half of the rounds; the privacy inventory names the rounds averaged as
configuration, not a choice on site metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common import checkpoint as ckpt_mod
from common import config as config_mod
from common.checkpoint import Checkpoint
from common.errors import ConfigError
from server.selection import ModelSelection, tail_rounds

pytestmark = pytest.mark.unit

ROUNDS, TAIL = 6, 3
AVERAGE = {"strategy.final_model": "tail_average", "strategy.rounds": ROUNDS}


def round_weights(r: int) -> dict[str, np.ndarray]:
    """Distinct weights per round, not in arithmetic progression (a mean of the wrong rounds differs)."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    return {"w": w * r**2 + 0.5, "b": np.full(2, np.sqrt(r), dtype=np.float32), "n": np.array(10 * r, np.int64)}


def line(r: int) -> dict:
    return {"round": r, "federated": {"accuracy": 1.0 / (r + 1)}, "central": {"accuracy": 0.5}}


def offer_rounds(sel: ModelSelection, rounds: range) -> None:
    shared = {k: v.copy() for k, v in round_weights(0).items()}
    for r in rounds:
        for k, v in round_weights(r).items():
            shared[k][...] = v  # the server reuses its arrays: the selection must not keep references
        sel.offer(r, line(r), shared)


def test_the_export_is_the_mean_of_the_last_rounds_weights() -> None:
    sel = ModelSelection("tail_average", "tail_average", ROUNDS, TAIL)
    offer_rounds(sel, range(0, ROUNDS + 1))
    rnd, got = sel.choice(ROUNDS, round_weights(ROUNDS))
    tail = [round_weights(r) for r in (4, 5, 6)]
    assert rnd == ROUNDS
    np.testing.assert_allclose(got["w"], (tail[0]["w"] + tail[1]["w"] + tail[2]["w"]) / 3, rtol=1e-6)
    np.testing.assert_allclose(got["b"], (tail[0]["b"] + tail[1]["b"] + tail[2]["b"]) / 3, rtol=1e-6)
    assert got["n"] == 50 and got["n"].dtype == np.int64 and got["w"].dtype == np.float32
    assert "rounds 4-6 (3 rounds" in sel.describe()
    # No site evaluated the average: only its own test metrics describe it.
    assert sel.final_metrics(line(ROUNDS), {"accuracy": 0.9}) == {"central": {"accuracy": 0.9}}


@pytest.mark.parametrize("stopped_after", [2, 3, 4, 5])
def test_a_resumed_run_exports_the_same_mean(tmp_path: Path, stopped_after: int) -> None:
    """Stopped before the window (2, 3), inside it (4, 5): the written checkpoint carries the sum."""
    whole = ModelSelection("tail_average", "tail_average", ROUNDS, TAIL)
    offer_rounds(whole, range(0, ROUNDS + 1))
    _, expected = whole.choice(ROUNDS, round_weights(ROUNDS))

    first = ModelSelection("tail_average", "tail_average", ROUNDS, TAIL)
    offer_rounds(first, range(0, stopped_after + 1))
    exp = config_mod.load(None, {**AVERAGE, "strategy.tail_rounds": TAIL})
    saved = Checkpoint(stopped_after, "1", ckpt_mod.flat_config(exp), round_weights(stopped_after), tail=first.tail)
    ckpt_mod.write(tmp_path / ckpt_mod.FILE, saved)

    resumed = ModelSelection.for_experiment(exp)
    resumed.restore(ckpt_mod.read(tmp_path / ckpt_mod.FILE))
    offer_rounds(resumed, range(stopped_after + 1, ROUNDS + 1))
    _, got = resumed.choice(ROUNDS, round_weights(ROUNDS))
    for k in expected:
        assert got[k].dtype == expected[k].dtype and np.array_equal(got[k], expected[k])
    assert resumed.describe() == whole.describe()


def test_a_resume_that_would_average_other_rounds_is_refused(tmp_path: Path) -> None:
    """Stopped at round 5 with rounds 4-5 summed; the resumed job averages rounds 3-6, whose round 3
    the checkpoint no longer holds: refused, naming the key, instead of a mean of other rounds."""
    first = ModelSelection("tail_average", "tail_average", ROUNDS, TAIL)
    offer_rounds(first, range(0, 6))
    exp = config_mod.load(None, {**AVERAGE, "strategy.tail_rounds": 4})
    ckpt = Checkpoint(5, "1", ckpt_mod.flat_config(exp), round_weights(5), tail=first.tail)
    with pytest.raises(ConfigError, match=r"strategy\.tail_rounds.*rounds 3 onwards.*sum from round 4"):
        ModelSelection.for_experiment(exp).restore(ckpt)


@pytest.mark.parametrize("overrides", [{"strategy.tail_rounds": -1}, {"strategy.rounds": 5, "strategy.tail_rounds": 6}])
def test_bad_tail_rounds_is_refused_in_one_line_naming_the_key(overrides: dict) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(None, {"strategy.final_model": "tail_average", **overrides})
    message = str(info.value)
    assert "config key 'strategy.tail_rounds'" in message and "\n" not in message


def test_tail_rounds_zero_is_half_of_the_rounds_rounded_up() -> None:
    assert tail_rounds(config_mod.load(None, {"strategy.rounds": 5})) == 3
    assert tail_rounds(config_mod.load(None, {"strategy.rounds": 30, "strategy.tail_rounds": 10})) == 10


def test_the_privacy_inventory_says_the_averaged_rounds_are_configuration() -> None:
    """No site metric chooses a tail average: privacy.json must not say the export was chosen on one."""
    from common.privacy.governance import inventory

    exp = config_mod.load(None, {**AVERAGE, "privacy.mode": "local", "privacy.site_metrics": "noisy"})
    assert inventory.for_run(exp)["MODEL_CARD.md"]["exported"].startswith("which rounds' global models were averaged")
