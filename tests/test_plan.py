"""``confide plan`` (client/plan.py, common/privacy/governance/plan.py): the DP-SGD plan a site will follow.

Proves: the printed noise multiplier spends the target epsilon by an accountant other than the
one Confide uses (Google's dp_accounting); the printed epsilons after each round agree with it; a
config whose noise norm is in the measured collapse range gets a recipe and an epsilon, one in the
learning range does not; --records splits declared counts as the sites will; bad input ends in one
line with exit code 2; a plan writes nothing (state folder, ledger folder, output folder).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import rdp

from client import plan as plan_cli
from common.privacy.governance import plan

pytestmark = pytest.mark.unit

BASE = """
name: plan-test
seed: 0
model: {model}
data:
  source: synthetic_images
  labels: ["0", "1"]
  num_sites: 2
  val_fraction: 0.1
train:
  local_epochs: 1
  batch_size: {batch}
strategy:
  rounds: {rounds}
privacy:
  mode: local
  target_epsilon: {eps}
  ledger_dir: {ledgers}
output_dir: {out}
"""
LINEAR = "{name: linear, features: pixels, in_channels: 1, image_size: 28}"  # d = 2 * 784 + 2 = 1570
RESNET = "{name: resnet8, in_channels: 1, image_size: 28}"


def _config(tmp_path: Path, model: str, batch: int, rounds: int = 4, eps: float = 8.0) -> Path:
    path = tmp_path / "job.yaml"
    ledgers, out = tmp_path / "ledgers", tmp_path / "out"
    ledgers.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    path.write_text(BASE.format(model=model, batch=batch, rounds=rounds, eps=eps, ledgers=ledgers, out=out))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = plan_cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("site-")}


def _dp_accounting_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def test_sigma_spends_the_target_by_an_independent_accountant(tmp_path: Path, capsys) -> None:
    """n = 1000 records -> 900 training (val_fraction 0.1); B = 100: q = 1/9, 9 steps a round."""
    code, out, _ = _run(capsys, str(_config(tmp_path, LINEAR, 100)), "--records", "1000")
    assert code == 0
    row = _rows(out)["site-0"]
    n, b, q, steps, rounds, sigma, delta = (
        int(row[1]),
        int(row[2]),
        float(row[3]),
        int(row[4]),
        int(row[5]),
        float(row[6]),
        float(row[7]),
    )
    assert (n, b, steps, rounds, delta) == (900, 100, 9, 4, 1e-5)
    assert q == pytest.approx(1 / 9, rel=1e-3)
    # The whole job (4 rounds x 9 steps) spends epsilon 8 at the printed sigma (4 printed digits).
    assert _dp_accounting_epsilon(sigma, q, 36, delta) == pytest.approx(8.0, rel=0.01)
    # Each round's printed cumulative epsilon: the same composition over r rounds.
    line = next(x for x in out.splitlines() if x.strip().startswith("site-0: round 1"))
    printed = [float(v) for v in re.findall(r"round \d+: ([0-9.]+)", line)]
    assert len(printed) == 4
    for r, eps in enumerate(printed, start=1):
        assert eps == pytest.approx(_dp_accounting_epsilon(sigma, q, 9 * r, delta), rel=0.01)
    assert float(row[8]) == pytest.approx(sigma * 1.0 / 100, rel=1e-3)  # sigma*C/B, C = 1


def test_many_rounds_show_epsilon_at_quarters() -> None:
    assert plan.marks(40) == [1, 10, 20, 30, 40]
    assert plan.marks(3) == [1, 2, 3]


def test_verdict_over_and_under_the_measured_threshold(tmp_path: Path, capsys) -> None:
    """Linear on pixels (d = 1570) at B = 128: sigma*sqrt(d)/B is far below 1 (learns, no advice).
    ResNet-8 (74k weights, sqrt ~ 273) at B = 256 and epsilon 0.5 (sigma ~ 4): far above 2.3 (collapse
    range): a recipe, and a larger epsilon on the grid at which sigma*sqrt(d)/B falls to 1."""
    code, out, _ = _run(capsys, str(_config(tmp_path, LINEAR, 128)), "--records", "1000,1000")
    assert code == 0
    sigma = float(_rows(out)["site-0"][6])
    ratio = float(re.search(r"sigma\*sqrt\(d\)/B = ([0-9.]+) \(d = 1,570 ", out).group(1))
    assert ratio == pytest.approx(sigma * math.sqrt(1570) / 128, abs=0.01)
    assert "verdict: in the range where measured runs learned" in out
    assert "a recipe that fits" not in out

    code, out, _ = _run(capsys, str(_config(tmp_path, RESNET, 256, eps=0.5)), "--records", "5000,5000")
    assert code == 0
    assert "verdict: in the range where measured runs collapsed" in out
    assert "model.name: linear with model.features: scatter or pixels" in out
    eps = float(re.search(r"falls to 1 at epsilon ([0-9.]+)", out).group(1))
    assert eps > 0.5 and eps in plan.EPSILON_GRID


def test_records_are_split_as_the_sites_split_them(tmp_path: Path, capsys) -> None:
    """val_fraction 0.1: 1000 -> 900 training, 41 -> 37 (round(4.1) = 4 held out), 2 -> 1."""
    code, out, _ = _run(capsys, str(_config(tmp_path, LINEAR, 16)), "--records", "1000", "--records", "41,2000")
    assert code == 0
    rows = _rows(out)
    assert [rows[f"site-{i}"][1] for i in range(3)] == ["900", "37", "1800"]
    assert "not probed (no records readable here)" in out


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["missing.yaml", "--records", "100"], "experiment not found"),
        (["{job}", "--records", "1x"], "--records"),
        (["{job}", "--records", "1"], "--records"),
        (["{job}", "--records", "100", "--data-path", "x.npz"], "--data-path"),
        (["{job}", "--records", "100", "--set", "train.nope=1"], "train.nope"),
        (["{job}", "--records", "100", "--set", "privacy.mode=off", "--set", "privacy.target_epsilon=null"], "local"),
        (["{job}", "--data-path", "{tmp}/absent.npz"], "--data-path"),
        (["{job}", "--bogus"], "--bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, argv: list[str], names: str) -> None:
    job = str(_config(tmp_path, LINEAR, 64))
    code, out, err = _run(capsys, *[a.format(job=job, tmp=tmp_path) for a in argv])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("confide: ") and names in err


def test_a_plan_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("CONFIDE_STATE_DIR", str(state))
    job = _config(tmp_path, LINEAR, 64)

    def listing() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    before = listing()
    code, _, _ = _run(capsys, str(job), "--records", "500,700")
    assert code == 0
    assert listing() == before


def test_with_a_baseline_share_the_model_is_planned_on_the_rest(tmp_path: Path, capsys) -> None:
    """baseline.epsilon_share 0.25 of epsilon 8: the rows are the model's, at epsilon 6 by an
    independent accountant, and a line says what the baseline takes."""
    path = _config(tmp_path, RESNET, 100)
    code, out, _ = _run(capsys, str(path), "--records", "1000", "--set", "baseline.epsilon_share=0.25")
    assert code == 0
    row = _rows(out)["site-0"]
    sigma, q, delta = float(row[6]), float(row[3]), float(row[7])
    assert _dp_accounting_epsilon(sigma, q, 36, delta) == pytest.approx(6.0, rel=0.01)
    assert "baseline: a linear layer on pixels trained first at epsilon 2" in out
    code, out, _ = _run(capsys, str(path), "--records", "1000")
    assert "baseline: none (privacy.mode 'local' and no budget assigned to it" in out
