"""The deployment docs as a test suite: every shell block is run by a test or says why not, the
documented trial walks the whole first hour, and the trial job fits the shipped site policy and
compose file (so the documented job is not refused, as the old example was)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import yaml

from common import config as config_mod
from common.privacy.governance.dpsgd import plan_round
from common.privacy.governance.policy import from_node_config
from common.privacy.mechanism.accounting import epsilon
from simulations.trial_data import write_trial_data
from tests.doc_commands import DOCS, KINDS, REPO, TRIAL_DIR, bash_blocks, blocks

pytestmark = pytest.mark.unit

TRIAL = REPO / "simulations" / "configs" / "deploy_trial.yaml"
COMPOSE = REPO / "docker" / "compose.yaml"


def test_every_deployment_shell_block_is_run_by_a_test_or_says_why_not() -> None:
    """Proves no command in the deployment docs goes untested by accident: each ```bash block
    carries a doc-test marker naming the test that runs it, or 'not run:' with a reason; only
    the trial folder is a placeholder in the blocks the tests run."""
    found = [b for doc in DOCS for b in bash_blocks(doc)]
    assert len(found) >= 12
    for block in found:
        assert block.kind in KINDS or (block.kind.startswith("not run: ") and len(block.kind) > 30), block.where
    for block in blocks("containers") + blocks("host"):
        other = set(re.findall(r"/srv/[\w./-]+", block.text)) - {TRIAL_DIR}
        assert not other, f"{block.where}: {other} is not the documented placeholder {TRIAL_DIR}"


def test_the_documented_trial_covers_the_first_hour() -> None:
    """Proves the container walk-through holds every step an admin needs, in order: images, trial
    data, the coordinator, enrolment of both sites, the sites, the trial job, the site's tools
    inside its container (status, audit log, ledger check), and a second trial job; and the
    non-container blocks run the same job and tools, plus a job that must fail."""
    walk = "\n".join(b.text for b in blocks("containers"))
    steps = [
        "scripts/deploy-containers.sh --build-only",
        "docker/make-trial-data.sh $DEPLOY",
        "up -d coordinator",
        "flwr supernode register $DEPLOY/site-a/keys/site-a.pub confide",
        "flwr supernode register $DEPLOY/site-b/keys/site-b.pub confide",
        "up -d site-a site-b",
        "confide submit . confide --run-config \"experiment='simulations/configs/deploy_trial.yaml'\"",
        "podman exec confide-site-a confide site-status",
        "podman exec confide-site-a confide-site-audit show /var/lib/confide/ledger/site-a.audit.jsonl",
        "podman exec confide-site-a confide check-ledger /var/lib/confide/ledger/site-a.json",
        "confide submit . confide",
        "compose.yaml down",
    ]
    at = [walk.find(step, 0 if i == 0 else walk.find(steps[i - 1]) + 1) for i, step in enumerate(steps)]
    assert all(i >= 0 for i in at) and at == sorted(at), dict(zip(steps, at, strict=True))
    assert walk.count("confide submit") == 2 and "flwr run" not in walk
    host = blocks("host")
    assert [b.kind for b in host] == ["host", "host expect-fail"]
    assert "confide site-status" in host[0].text and "privacy.site_metrics='exact'" in host[1].text
    for name in ("confide-coordinator", "confide-site-a", "confide-site-b"):
        assert f"container_name: {name}" in COMPOSE.read_text()
    for script in ("docker/make-trial-data.sh", "scripts/deploy-containers.sh", "docker/site-tool.sh"):
        assert os.access(REPO / script, os.X_OK), script


def test_the_trial_job_fits_the_shipped_policy_compose_file_and_budget() -> None:
    """Proves the documented trial job is accepted where the old example was refused: the shipped
    docker/site-policy.json passes it (local DP; the cap check uses the same policy), its
    min_sites and num_sites equal the compose file's two sites, its central test set is the
    coordinator's /data mount, and one job's epsilon is at most 1 while five such jobs still fit
    under the policy's cap of 8 (composed over the whole ledger, as the site charges them)."""
    exp = config_mod.load(TRIAL)
    policy = from_node_config({"privacy-policy": str(REPO / "docker" / "site-policy.json"), "ledger-dir": "/x"}, True)
    policy.check_job(exp.privacy)  # raises PolicyRefused if the shipped policy refuses the job
    compose = yaml.safe_load(COMPOSE.read_text())
    sites = [name for name in compose["services"] if name.startswith("site-")]
    assert exp.strategy.min_sites == exp.data.num_sites == len(sites) == 2
    assert exp.data.path == "/data/test.npz"
    assert any(v.endswith("coordinator/data:/data:ro") for v in compose["services"]["coordinator"]["volumes"])
    records = 647  # 719 records per trial site, 10% held out: the site trains on 647
    plan = plan_round(exp.privacy, exp.train, exp.strategy.rounds, records)
    job = [(plan.noise_multiplier, plan.sample_rate, plan.steps)] * exp.strategy.rounds
    assert plan.noise_multiplier >= policy.min_noise_multiplier and plan.delta <= policy.max_delta
    assert epsilon(job, plan.delta) <= 1.0 + 1e-6
    assert epsilon(job * 5, plan.delta) <= policy.max_epsilon


def test_trial_data_is_disjoint_site_shares_and_the_fixed_test_split(tmp_path) -> None:
    """Proves docker/make-trial-data.sh's files: each site's train.npz in the npz layout sites
    read ((N,8,8) uint8 images, (N,1) labels), the two shares disjoint and together the digits'
    1,438 training records (1,797 minus the 359 of the fixed test split), all ten digits at
    each site, and the coordinator's test.npz holding the 359 test records."""
    counts = write_trial_data(tmp_path, ["site-a", "site-b"])
    assert counts == {"site-a": 719, "site-b": 719, "coordinator": 359}
    shares = []
    for site in ("site-a", "site-b"):
        with np.load(tmp_path / site / "data" / "train.npz") as data:
            assert set(data.files) == {"train_images", "train_labels"}
            images, labels = data["train_images"], data["train_labels"]
        assert images.shape == (719, 8, 8) and images.dtype == np.uint8 and labels.shape == (719, 1)
        assert set(labels[:, 0].tolist()) == set(range(10))
        shares.append({img.tobytes() + bytes([int(lab)]) for img, lab in zip(images, labels[:, 0], strict=True)})
    assert len(shares[0] & shares[1]) <= 5  # sklearn's digits hold a few exact duplicate images
    with np.load(tmp_path / "coordinator" / "data" / "test.npz") as data:
        assert data["test_images"].shape == (359, 8, 8) and data["test_labels"].shape == (359, 1)
