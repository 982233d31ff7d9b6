"""Where a party's privacy ledger lives (common/privacy/governance/ledger_home.py, common/site.py): with the site
and its data, never with a run folder or a job, so every run on the same data composes into one
epsilon; and ``check-ledger --run-folder`` reports a run whose trained rounds a ledger lacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common import config as config_mod
from common.privacy.governance.check import main as check_main
from common.privacy.governance.ledger_home import central_ledger, data_fingerprint
from common.privacy.governance.policy import SIMULATION, from_node_config
from common.site import SiteSpec, ledger_path

pytestmark = pytest.mark.unit


def test_a_simulated_sites_ledger_does_not_follow_the_output_folder_or_the_job(project_root: Path) -> None:
    spec = SiteSpec("site-0", 0, 2)
    a = config_mod.load(None, {"output_dir": "runs-a"})
    b = config_mod.load(None, {"output_dir": "elsewhere/runs-b"})
    expected = project_root / "confide-state" / "ledgers" / "builtin-digits" / "site-0.json"
    assert ledger_path(a, spec, SIMULATION) == ledger_path(b, spec, SIMULATION) == expected
    assert central_ledger(a) == central_ledger(b) == expected.with_name("central.json")


def test_the_data_set_folder_is_named_by_the_files_bytes(project_root: Path) -> None:
    def npz(name: str, labels: list[int]) -> str:
        path = project_root / name
        np.savez(path, train_images=np.zeros((len(labels), 8, 8), np.uint8), train_labels=np.array(labels))
        return str(path)

    one, same, other = npz("one.npz", [0, 1]), npz("copy.npz", [0, 1]), npz("other.npz", [0, 1, 1])
    cfg = config_mod.load(None, {"data.source": "npz", "data.path": one}).data
    digest = lambda p: data_fingerprint(cfg, p).rsplit("-", 1)[1]  # noqa: E731
    assert digest(one) == digest(same) != digest(other)
    assert data_fingerprint(cfg, one).startswith("one-")


def test_a_deployed_site_never_takes_its_ledger_folder_from_the_job(project_root: Path) -> None:
    """A job naming privacy.ledger_dir cannot move a deployed site's ledger (lenient policy without
    ledger-dir: the site's own state folder; with ledger-dir: that folder)."""
    data = project_root / "mine.npz"
    np.savez(data, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.array([0, 1, 0, 1]))
    job_dir = str(project_root / "chosen-by-the-job")
    exp = config_mod.load(None, {"privacy.mode": "local", "privacy.ledger_dir": job_dir})
    node = {"data-path": str(data), "site-name": "st marys", "require-ledger": "false"}
    spec = SiteSpec.from_node_config(node)
    lenient = ledger_path(exp, spec, from_node_config(node, deployed=True))
    assert lenient.parent.parent == project_root / "confide-state" / "ledgers" and lenient.name == "st_marys.json"
    pinned = ledger_path(exp, spec, from_node_config({**node, "ledger-dir": "site-ledger"}, deployed=True))
    assert pinned == project_root / "site-ledger" / "st_marys.json"


def _run_folder(tmp_path: Path, trained_rounds: list[int]) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    lines = [{"round": 0, "run_id": "11", "sites": {}}]
    lines += [{"round": r, "run_id": "11" if r < 3 else "12", "sites": {"s": {"train": {"weight": 1.0}}}}
              for r in trained_rounds]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def _ledger(tmp_path: Path, rounds: list[int], job: str = "11") -> Path:
    entries = [{"noise_multiplier": 2.0, "sample_rate": 1.0, "steps": 1, "kind": "dpsgd", "run": job, "round": r}
               for r in rounds]  # fmt: skip
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"entries": entries}))
    return path


def test_check_ledger_reports_trained_rounds_missing_from_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run trained rounds 1-4 under job 11 (rounds 3-4 after a resume, by run 12); a ledger that
    restarted holds only rounds 3-4: exit 1, rounds 1 and 2 named. The full ledger passes."""
    folder = _run_folder(tmp_path, [1, 2, 3, 4])
    restarted = _ledger(tmp_path, [3, 4])
    assert check_main([str(restarted), "--records", "100", "--run-folder", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "2 of 4 rounds site 's' trained are in the ledger" in out
    assert "MISMATCH round 1" in out and "MISMATCH round 2" in out and "MISMATCH round 3" not in out
    complete = _ledger(tmp_path, [1, 2, 3, 4])
    assert check_main([str(complete), "--records", "100", "--run-folder", str(folder)]) == 0
    assert check_main([str(complete), "--records", "100", "--run-folder", str(tmp_path / "none")]) == 2
