"""Containers: docker/README.md's trial run, block by block, exactly as documented (only the trial
folder, /srv/confide-trial, becomes a tmp_path folder): images, test credentials and trial data,
the coordinator and two sites from docker/compose.yaml (podman-compose, host networking,
127.0.0.1 ports 9092-9095), enrolment, two trial jobs through `confide submit`, and the site's
tools inside its container; then what the docs promise is checked on the host folders.

Skips (with the reason) where podman or podman-compose >= 1.1 is missing, when not root (the
trial hands the mounted folders to the images' uid 10001), when the trial's ports are taken, or
when the images are not built and CONFIDE_CONTAINER_BUILD=1 does not ask for the build (the first
documented block builds what is missing: tens of minutes). scripts/deploy-containers.sh builds
the images and runs this test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_commands import Session, blocks
from tests.test_deploy import BIN, DOCKER

pytestmark = [pytest.mark.system, pytest.mark.slow]

IMAGE_UID = 10001
TAG = os.environ.get("CONFIDE_TAG", "latest")
IMAGES = tuple(f"localhost/confide-{name}:{TAG}" for name in ("site", "coordinator", "site-gpu"))
PORTS = (9092, 9093, 9094, 9095)  # the trial's: compose.yaml's defaults
SITES = ("site-a", "site-b")


def podman_env(**extra: str) -> dict[str, str]:
    """podman's settings: docker/podman-sandbox.conf unless CONFIDE_CONTAINERS_CONF names another."""
    conf = os.environ.get("CONFIDE_CONTAINERS_CONF", str(DOCKER / "podman-sandbox.conf"))
    return {**os.environ, "CONTAINERS_CONF": conf, **extra}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, check=check, timeout=timeout
    )


def compose_version() -> tuple[int, ...]:
    """podman-compose's version, (0,) when absent or unreadable."""
    if shutil.which("podman-compose") is None:
        return (0,)
    out = subprocess.run(["podman-compose", "--version"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("podman-compose version"):
            return tuple(int(x) for x in line.split()[-1].split(".")[:2] if x.isdigit())
    return (0,)


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


@pytest.fixture(scope="module")
def images() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (Debian: apt-get install podman runc debootstrap)")
    if compose_version() < (1, 1):
        pytest.skip("podman-compose >= 1.1 is not installed (pip install podman-compose; Debian 12's 1.0.3 "
                    "adds a bridge network to host-networked services and podman refuses them)")  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("needs root: the mounted folders are handed to the images' uid 10001")
    busy = [port for port in PORTS if port_taken(port)]
    if busy:
        pytest.skip(f"the trial's ports {busy} on 127.0.0.1 are taken (docker/README.md's trial uses 9092-9095)")
    missing = [name for name in IMAGES if not image_exists(name)]
    if missing and os.environ.get("CONFIDE_CONTAINER_BUILD") != "1":
        pytest.skip(f"images {', '.join(missing)} not built: run scripts/deploy-containers.sh, "
                    "or set CONFIDE_CONTAINER_BUILD=1 to build them here (tens of minutes)")  # fmt: skip


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def remove_trial() -> None:
    """The trial's containers, whatever state the test left them in (fixed names: compose.yaml)."""
    for name in ("confide-site-a", "confide-site-b", "confide-coordinator"):
        podman("rm", "-f", "-t", "10", name, check=False)


@pytest.fixture
def trial(images: None, tmp_path: Path) -> Iterator[Session]:
    env = podman_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", CONFIDE_TAG=TAG)
    for var in ("FLWR_HOME", "CONFIDE_DEPLOY_DIR", "DEPLOY"):
        env.pop(var, None)
    remove_trial()
    session = Session(env, tmp_path / "confide-trial", [])
    try:
        yield session
    finally:
        remove_trial()
        print("\n\n".join(session.log)[-20000:])


def test_the_documented_trial_run(trial: Session) -> None:
    """Proves docker/README.md's trial run works as written, command by command: images built, the
    coordinator and both site containers up (sites dialling the public port), the trial job
    accepted by the shipped site policy and completed (confide submit exits 0), its run folder
    complete, the site's policy, remaining budget and audit log shown from inside the site
    container, and a second trial job accepted. Then, on the host folders and containers: both
    run folders hold rounds 0-2 with both sites; each site's ledger (owned by uid 10001) and audit
    log are where the docs say; the sites trained through the proxy, which refuses key enrolment
    from the public port (403); the site container runs as uid 10001 with /data and its root
    filesystem read-only."""
    walk = blocks("containers")
    assert walk and "compose.yaml down" in walk[-1].text
    outputs = []
    for block in walk[:-1]:
        res = trial.run(block)
        outputs.append(res.stdout + res.stderr)
        assert res.returncode == 0, f"documented command at {block.where} failed:\n" + "\n".join(trial.log[-2:])
    deploy = trial.trial_dir
    status = next(out for out, b in zip(outputs, walk, strict=False) if "confide site-status" in b.text)
    assert "policy in force" in status and "epsilon spent" in status and "room for" in status, status
    assert "site-a.audit.jsonl" in status

    runs = sorted((deploy / "coordinator" / "state" / "runs").glob("*-deploy-trial-*"))
    assert len(runs) == 2, runs
    for folder in runs:
        assert not folder.name.endswith(".incomplete"), (folder / "FAILED.txt").read_text()
        assert folder.stat().st_uid == IMAGE_UID
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [x["round"] for x in lines] == [0, 1, 2]
        assert all(set(x["sites"]) == set(SITES) and x["failures"] == [] for x in lines[1:])
        assert (folder / "MODEL_CARD.md").is_file() and (folder / "model").is_dir()
    for site in SITES:
        ledger = deploy / site / "state" / "ledger"
        assert (ledger / f"{site}.json").stat().st_uid == IMAGE_UID
        assert len((ledger / f"{site}.audit.jsonl").read_text().splitlines()) >= 4
        assert "Starting Flower SuperNode" in (deploy / site / "logs" / "supernode.log").read_text()
    assert "/v1/fleet/" in (deploy / "coordinator" / "logs" / "proxy-access.log").read_text()

    admin = Path(trial.env["FLWR_HOME"])
    ca = deploy / "ca" / "ca.crt"
    with (admin / "config.toml").open("a") as config:
        config.write(f'\n[superlink.public]\naddress = "127.0.0.1:9092"\nroot-certificates = "{ca}"\n')
    key = deploy / "site-a" / "keys" / "site-a.pub"
    cmd = [str(BIN / "flwr"), "supernode", "register", str(key), "public"]
    refused = subprocess.run(cmd, env=trial.env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    assert podman("exec", "confide-site-a", "id", "-u").stdout.strip() == str(IMAGE_UID)
    for path in ("/data/probe", "/opt/probe"):
        assert podman("exec", "confide-site-a", "touch", path, check=False).returncode != 0, f"{path} is writable"

    down = trial.run(walk[-1])
    assert down.returncode == 0, trial.log[-1]
