"""The Control API off the sites' network, with real processes on 127.0.0.1.

The coordinator is started by its container entrypoint (docker/coordinator-entrypoint.sh) with
CONFIDE_PUBLIC_PORT set, as in the image: Flower's SuperLink (TLS, SuperNode authentication) on
127.0.0.1:<admin port>, and nginx (docker/proxy/) on 127.0.0.1:<public port>, a different port
standing in for the address the sites dial. The proxy forwards only the Fleet API (/v1/fleet/); the
admin's `flwr` CLI and the ServerApp reach the SuperLink on the admin port.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_deploy import (
    BIN,
    DOCKER,
    REPO,
    Federation,
    Processes,
    free_port,
    metrics,
    run_script,
    tls_handshake_ok,
    wait_for,
    write_npz,
)

pytestmark = pytest.mark.system

SITE = "site-a"


def nginx_binary() -> str | None:
    return shutil.which("nginx", path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/sbin")


@dataclass
class Locked(Federation):
    """A federation whose sites dial the proxy's public port; the admin's connection 'confide'
    points at the SuperLink's own (admin) port and the connection 'public' at the proxy."""

    public_port: int = 0

    @property
    def address(self) -> str:  # what start_site gives the SuperNodes
        return f"127.0.0.1:{self.public_port}"

    def access_log(self) -> list[str]:
        path = self.root / "coordinator" / "logs" / "proxy-access.log"
        return path.read_text().splitlines() if path.exists() else []

    def requests(self, path_prefix: str, since: int = 0) -> list[tuple[str, str]]:
        """(status, upstream status) of each proxied request line whose path starts so."""
        out = []
        for line in self.access_log()[since:]:
            fields = line.split('"')
            if len(fields) >= 3 and fields[1].split(" ")[1:2] and fields[1].split(" ")[1].startswith(path_prefix):
                rest = fields[2].split()
                out.append((rest[0], rest[-1].removeprefix("upstream=")))
        return out


def raw_status(port: int, ca: Path, request_line: str) -> int:
    """Send one request line over TLS exactly as written (no client-side path normalisation)."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/protobuf\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            head = tls.recv(4096).decode(errors="replace")
    return int(head.split(" ", 2)[1])


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx not installed (Debian package 'nginx'): the coordinator's Fleet-only proxy needs it")
    missing = [tool for tool in ("openssl", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the docker/ credential scripts need them")
    root = tmp_path_factory.mktemp("lockout")
    (root / "logs").mkdir()
    coordinator = root / "coordinator"
    creds = coordinator / "credentials"
    run_script("make-test-ca.sh", creds)
    run_script("make-test-cert.sh", creds, "runtime")
    run_script("make-site-key.sh", root / "sites" / SITE, SITE)
    write_npz(root / "sites" / SITE / "data" / "train.npz", seed=1)
    write_npz(coordinator / "data" / "test.npz", seed=9)
    procs = Processes(root)
    fed = Locked(root=root, procs=procs, port=free_port(), creds=creds, public_port=free_port())
    (root / "admin").mkdir()
    (root / "admin" / "config.toml").write_text(
        '[superlink]\ndefault = "confide"\n\n'
        f'[superlink.confide]\naddress = "127.0.0.1:{fed.port}"\nroot-certificates = "{creds / "ca.crt"}"\n\n'
        f'[superlink.public]\naddress = "127.0.0.1:{fed.public_port}"\nroot-certificates = "{creds / "ca.crt"}"\n'
    )
    # nginx's workers (user nobody when started as root) need a directory they can enter.
    run_dir = Path(tempfile.mkdtemp(prefix="confide-proxy-"))
    env = {
        "PATH": f"{BIN}{os.pathsep}{Path(nginx).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(coordinator / "flwr-home"),
        "CONFIDE_ROOT": str(coordinator),
        "CONFIDE_LOG_DIR": str(coordinator / "logs"),
        "CONFIDE_CREDENTIALS": str(creds),
        "CONFIDE_SUPERLINK_HOST": "127.0.0.1",
        "CONFIDE_SUPERLINK_PORT": str(fed.port),
        "CONFIDE_PUBLIC_HOST": "127.0.0.1",
        "CONFIDE_PUBLIC_PORT": str(fed.public_port),
        "CONFIDE_PROXY_RUN_DIR": str(run_dir),
    }
    try:
        procs.start("superlink", ["bash", str(DOCKER / "coordinator-entrypoint.sh")], cwd=coordinator, **env)
        for port in (fed.port, fed.public_port):
            wait_for(f"TLS on port {port}", lambda p=port: tls_handshake_ok(p, creds / "ca.crt"), timeout=90)
        yield fed
    finally:
        procs.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.slow
def test_sites_reach_only_the_fleet_api_and_the_admin_side_reaches_everything(locked: Locked) -> None:
    """Proves the lockout with Flower's own processes, through nginx:
    - from the public port, the Control API, the ServerApp's API, /health and /docs are refused by
      the proxy itself (403, never forwarded), also when the path hides behind /v1/fleet/ with dot
      segments or percent-encoding; a Fleet call is forwarded (the SuperLink answers it);
    - from the public port `flwr supernode register` and `flwr run` fail (non-zero exit), the
      proxy's access log shows their /v1/control/ calls refused with 403, and nothing was enrolled
      or started;
    - from the admin port both work: the site's key is enrolled, its SuperNode joins through the
      public port (SuperNode authentication survives the re-terminated TLS) and a 1-round job of
      the deployment experiment trains there to completion."""
    fed, ca = locked, locked.creds / "ca.crt"
    refused = [
        "POST /v1/control/list-runs",
        "POST /v1/control/register-node",
        "POST /v1/runtime/pull-messages",
        "GET /health",
        "GET /docs",
        "POST /v1/fleet/../control/list-runs",
        "POST /v1/fleet/%2e%2e/control/list-runs",
        "POST /v1/fleet/..%2fcontrol/list-runs",
        "POST /v1/fleet/pull-messages/../../control/list-runs",
        "POST /v1/fleet/%70ull-messages",
        "POST /v1/fleet/pull-messages?x=1",
        "GET /v1/fleet/pull-messages",
    ]
    mark = len(fed.access_log())
    for request in refused:
        assert raw_status(fed.public_port, ca, request) == 403, request
    assert raw_status(fed.public_port, ca, "POST /v1/fleet/pull-messages") not in (403, 404)  # the SuperLink's answer
    assert raw_status(fed.port, ca, "GET /health") == 200  # the admin side is the SuperLink itself
    lines = fed.access_log()[mark:]
    assert len(lines) == len(refused) + 1, lines
    assert all(line.endswith("upstream=-") and '" 403 ' in line for line in lines[:-1]), lines
    assert not lines[-1].endswith("upstream=-"), lines[-1]

    pub = str(fed.site_dir(SITE) / f"{SITE}.pub")
    mark = len(fed.access_log())
    res = fed.flwr("supernode", "register", pub, "public", timeout=60)
    assert res.returncode != 0 and "403 Forbidden" in res.stdout + res.stderr, res.stdout + res.stderr
    assert ("403", "-") in fed.requests("/v1/control/register-node", mark), fed.access_log()[mark:]
    assert fed.nodes() == {}

    node = fed.register(SITE)  # the admin side
    fed.start_site(SITE)
    wait_for("the site online through the proxy", lambda: fed.nodes().get(node) == "online", 120, 2)
    assert ("200", "200") in fed.requests("/v1/fleet/activate-node"), fed.access_log()

    job = {"strategy.rounds": 1, "strategy.min_sites": 1, "data.num_sites": 1, "strategy.fraction_evaluate": 0.0,
           "strategy.round_timeout": 120, "privacy.mode": "local"}  # fmt: skip
    mark = len(fed.access_log())
    cmd = [str(BIN / "flwr"), "run", str(REPO), "public", "--run-config", "experiment='x'"]
    env = fed.procs.env("cli-public", FLWR_HOME=str(fed.root / "admin"))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=fed.root)
    assert res.returncode != 0 and "403 Forbidden" in res.stdout + res.stderr, res.stdout + res.stderr
    control = fed.requests("/v1/control/", mark)
    assert control and all(call == ("403", "-") for call in control), fed.access_log()[mark:]
    assert '"runs": []' in fed.flwr("list", "confide", "--format", "json").stdout  # nothing was started

    run = fed.submit("through-proxy", **job)  # `flwr run` on the admin side
    assert run.wait(timeout=240) == 0, fed.procs.log("run-through-proxy")[-3000:]
    (folder,) = fed.run_folders("through-proxy")
    assert not (folder / "FAILED.txt").exists()
    final = metrics(folder)
    assert [line["round"] for line in final] == [0, 1]
    assert set(final[1]["sites"]) == {SITE} and final[1]["failures"] == []
    fleet = fed.requests("/v1/fleet/")
    assert {"/v1/fleet/pull-messages", "/v1/fleet/push-messages"} <= {
        line.split('"')[1].split(" ")[1] for line in fed.access_log() if "/v1/fleet/" in line
    }
    assert fleet and all(status == "200" for status, _ in fleet[-10:]), fleet[-10:]


def test_proxy_settings_that_would_expose_the_control_api_are_refused(tmp_path: Path) -> None:
    """Proves the fast guards: the rendered configuration forwards one location only (Fleet), and
    the coordinator will not start the proxy beside a SuperLink listening on every address, nor
    without TLS, nor with a setting that could inject nginx syntax."""
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("ca.crt", "superlink.crt", "superlink.key"):
        (creds / name).write_text("x")
    base = {"PATH": "/usr/bin:/bin", "CONFIDE_CREDENTIALS": str(creds), "CONFIDE_LOG_DIR": str(tmp_path / "logs"),
            "CONFIDE_PROXY_RUN_DIR": str(tmp_path / "run"), "CONFIDE_PUBLIC_PORT": "9092"}  # fmt: skip
    render = DOCKER / "proxy" / "render-nginx-conf.sh"

    def run(script: Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script)], env={**base, **env}, capture_output=True, text=True, timeout=30)

    res = run(render)
    assert res.returncode == 0, res.stderr
    conf = Path(res.stdout.strip()).read_text()
    assert conf.count("proxy_pass ") == 1 and "location ~ ^/v1/fleet/[a-z][a-z-]*$" in conf
    assert "server 127.0.0.1:9093;" in conf and "listen 0.0.0.0:9092 ssl;" in conf and "@CA@" not in conf
    for bad in ({"CONFIDE_SUPERLINK_HOST": "0.0.0.0"}, {"CONFIDE_SUPERLINK_HOST": "::"},
                {"CONFIDE_SUPERLINK_CERT_NAME": "x; location / {"}, {"CONFIDE_PUBLIC_PORT": "9092;"}):  # fmt: skip
        res = run(render, **bad)
        assert res.returncode == 2 and not res.stdout, (bad, res.stdout)
    entry = DOCKER / "coordinator-entrypoint.sh"
    res = run(entry, FLWR_HOME=str(tmp_path / "flwr"), CONFIDE_ROOT=str(tmp_path), CONFIDE_INSECURE="1")
    assert res.returncode == 2 and "needs TLS" in res.stderr
    res = run(entry, FLWR_HOME=str(tmp_path / "flwr"), CONFIDE_ROOT=str(tmp_path), CONFIDE_SUPERLINK_HOST="0.0.0.0")
    assert res.returncode == 2 and "would expose the Control API" in res.stderr
