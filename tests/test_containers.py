"""Containers: the images built from docker/Dockerfile run one coordinator and two sites from
docker/compose.yaml (podman-compose, host networking, 127.0.0.1 only), with test credentials made
by the docker/ scripts in tmp_path, and a real job submitted with `flwr run <repo> <connection>`.

Skips (with the reason) where podman or podman-compose is missing, when not root (the test hands
the mounted folders to the images' uid 10001), or when the images are not built and
CONFIDE_CONTAINER_BUILD=1 does not ask this test to build them (base image with debootstrap,
then docker/build-images.sh: tens of minutes). scripts/deploy-containers.sh does both steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_deploy import (
    BIN,
    DOCKER,
    EXPERIMENT,
    REPO,
    free_port,
    run_script,
    tls_handshake_ok,
    wait_for,
    write_npz,
)

pytestmark = pytest.mark.slow

IMAGE_UID = 10001
TAG = os.environ.get("CONFIDE_TAG", "latest")
IMAGES = (f"localhost/confide-site:{TAG}", f"localhost/confide-coordinator:{TAG}")
BASE = "localhost/confide-base:bookworm"
WHEEL_DIRS = os.environ.get("CONFIDE_WHEEL_DIRS", "/opt/pypi-more/files /opt/pypi/files /opt/wheels")
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
    missing = [name for name in IMAGES if not image_exists(name)]
    if not missing:
        return
    if os.environ.get("CONFIDE_CONTAINER_BUILD") != "1":
        pytest.skip(f"images {', '.join(missing)} not built: run scripts/deploy-containers.sh, "
                    "or set CONFIDE_CONTAINER_BUILD=1 to build them here (tens of minutes)")  # fmt: skip
    if not image_exists(BASE):
        subprocess.run(["bash", str(DOCKER / "build-base.sh"), BASE], env=podman_env(), check=True, timeout=1800)
    env = podman_env(BASE_IMAGE=BASE, WHEEL_DIRS=WHEEL_DIRS, BUILD_CA_DIR="/etc/ssl/certs")
    subprocess.run(["bash", str(DOCKER / "build-images.sh"), TAG], env=env, check=True, timeout=5400)


def prepare(deploy: Path) -> None:
    """Credentials, data, state and log folders in the layout docker/compose.yaml mounts."""
    ca = deploy / "ca"
    run_script("make-test-ca.sh", ca)
    run_script("make-test-cert.sh", ca, "site-runtime")
    coordinator = deploy / "coordinator"
    for sub in ("credentials", "state", "logs"):
        (coordinator / sub).mkdir(parents=True)
    for name in ("ca.crt", "superlink.crt", "superlink.key"):
        shutil.copy(ca / name, coordinator / "credentials" / name)
    write_npz(coordinator / "data" / "test.npz", seed=9)
    for i, site in enumerate(SITES):
        home = deploy / site
        run_script("make-site-key.sh", home / "keys", site)
        for sub in ("credentials", "state", "logs"):
            (home / sub).mkdir(parents=True)
        shutil.copy(ca / "ca.crt", home / "credentials" / "ca.crt")
        shutil.copy(home / "keys" / f"{site}.key", home / "credentials" / "site.key")
        shutil.copy(ca / "site-runtime.crt", home / "credentials" / "runtime.crt")
        shutil.copy(ca / "site-runtime.key", home / "credentials" / "runtime.key")
        write_npz(home / "data" / "train.npz", seed=i + 1)
    for folder in [*deploy.glob("*/credentials"), *deploy.glob("*/state"), *deploy.glob("*/logs")]:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, IMAGE_UID, IMAGE_UID)
        for key in folder.glob("*.key"):
            key.chmod(0o400)


class Compose:
    def __init__(self, deploy: Path, tmp: Path) -> None:
        self.deploy = deploy
        self.project = f"confide-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()  # the SuperLink itself: the admin's side
        self.public_port = free_port()  # nginx: the sites' side, Fleet API only
        self.admin = tmp / "admin"
        self.admin.mkdir()
        ca = deploy / "ca" / "ca.crt"
        (self.admin / "config.toml").write_text(
            f'[superlink]\ndefault = "confide"\n\n[superlink.confide]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{ca}"\n\n[superlink.public]\naddress = "127.0.0.1:{self.public_port}"\n'
            f'root-certificates = "{ca}"\n'
        )
        self.env = podman_env(
            CONFIDE_DEPLOY_DIR=str(deploy),
            CONFIDE_TAG=TAG,
            CONFIDE_SUPERLINK_PORT=str(self.port),
            CONFIDE_PUBLIC_PORT=str(self.public_port),
            CONFIDE_SITE_A_RUNTIME_PORT=str(free_port()),
            CONFIDE_SITE_B_RUNTIME_PORT=str(free_port()),
        )

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        cmd = ["podman-compose", "-p", self.project, "-f", str(DOCKER / "compose.yaml"), *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FLWR_HOME": str(self.admin), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        return subprocess.run([str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout)

    def nodes(self) -> dict[str, str]:
        out = self.flwr("supernode", "list", "confide", "--format", "json").stdout
        return {n["node-id"]: n["status"] for n in json.loads(out[out.index("{") :])["nodes"]}

    def remove(self) -> None:
        self("down", "-t", "10")
        listed = podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={self.project}", check=False)
        for cid in listed.stdout.split():
            podman("rm", "-f", cid, check=False)


@pytest.fixture
def compose(images: None, tmp_path: Path) -> Iterator[Compose]:
    deploy = tmp_path / "deploy"
    prepare(deploy)
    stack = Compose(deploy, tmp_path)
    try:
        yield stack
    finally:
        stack.remove()


def test_coordinator_and_two_site_containers_run_a_job(compose: Compose) -> None:
    """Proves the images and compose file work as a site admin would use them: the coordinator
    container serves TLS with site authentication, both site keys are enrolled with the Flower CLI,
    the site containers (non-root, read-only root filesystem and data, writable state and logs)
    join, and a DP ResNet job from the simulation YAML completes with both sites' metrics; the
    run folder, each site's privacy ledger and the logs land on the mounted host folders. The sites
    reach the coordinator only through the compose file's nginx proxy (its access log shows their
    Fleet calls), which refuses the Control API (key enrolment from the public port: 403)."""
    up = compose("up", "-d", "--no-build", "coordinator")
    assert up.returncode == 0, up.stdout + up.stderr
    ca = compose.deploy / "ca" / "ca.crt"
    try:
        wait_for("the coordinator's SuperLink", lambda: tls_handshake_ok(compose.port, ca), timeout=120)
        wait_for("the coordinator's proxy", lambda: tls_handshake_ok(compose.public_port, ca), timeout=60)
    except AssertionError as exc:
        logs = podman("logs", compose.container("coordinator"), check=False)
        raise AssertionError(f"{exc}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}") from None
    refused = compose.flwr("supernode", "register", str(compose.deploy / "site-a" / "keys" / "site-a.pub"), "public")
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    node_ids = {}
    for site in SITES:
        res = compose.flwr("supernode", "register", str(compose.deploy / site / "keys" / f"{site}.pub"), "confide",
                           "--format", "json")  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        node_ids[site] = str(json.loads(res.stdout[res.stdout.index("{") :])["node-id"])
    up = compose("up", "-d", "--no-build", *SITES)
    assert up.returncode == 0, up.stdout + up.stderr
    wait_for("both site containers online", lambda: set(compose.nodes().values()) == {"online"}, 180, 3)

    run_config = (
        f"experiment='{EXPERIMENT}' name='containers' data.path='/data/test.npz' data.num_sites=2 "
        "data.max_samples=16 data.val_fraction=0.25 model.small_input=false train.batch_size=8 train.threads=1 "
        "strategy.rounds=1 strategy.min_sites=2 privacy.mode='local' privacy.noise_multiplier=2.0"
    )
    run = compose.flwr("run", str(REPO), "confide", "--stream", "--run-config", run_config, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]

    (folder,) = list((compose.deploy / "coordinator" / "state" / "runs").glob("*-containers-*"))
    assert not folder.name.endswith(".incomplete"), (folder / "FAILED.txt").read_text()
    assert folder.stat().st_uid == IMAGE_UID
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1] and set(lines[1]["sites"]) == set(SITES)
    assert lines[1]["failures"] == []
    for site in SITES:
        assert (compose.deploy / site / "state" / "ledger" / f"{site}.json").stat().st_uid == IMAGE_UID
        assert "Starting Flower SuperNode" in (compose.deploy / site / "logs" / "supernode.log").read_text()
    assert (compose.deploy / "coordinator" / "logs" / "superlink.log").stat().st_size > 0
    access = (compose.deploy / "coordinator" / "logs" / "proxy-access.log").read_text()
    assert "/v1/fleet/" in access  # the sites trained through the proxy, not the SuperLink's own port

    site = compose.container("site-a")
    assert podman("exec", site, "id", "-u").stdout.strip() == str(IMAGE_UID)
    for path in ("/data/probe", "/opt/probe"):
        assert podman("exec", site, "touch", path, check=False).returncode != 0, f"{path} is writable"
