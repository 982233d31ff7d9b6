"""Deployment with Flower's own processes on 127.0.0.1: one `flower-superlink` (TLS, SuperNode
authentication, state database), one `flower-supernode` per site (TLS, its own key, data file,
ledger and FLWR_HOME), and jobs submitted with `flwr run <app> <connection>`.

Credentials are made in tmp_path with the scripts in docker/; ports are picked free; every process
a test starts (and whatever Flower spawns from it: SuperExec, ServerApp, ClientApp) carries a tag
in its environment and is stopped by process id at the end, found by scanning /proc.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata
from flwr.common.config import parse_config_args
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity
from PIL import Image

from common import config as config_mod
from common.data import LabelSet
from common.errors import ConfideError, ConfigError
from common.privacy.governance.policy import from_node_config as policy_from_node_config
from common.schema import SchemaPins
from common.site import SiteSpec, site_records
from server.recorder import RoundRecorder
from server.strategy import build_strategy

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
TAG_VAR = "CONFIDE_DEPLOY_TAG"
EXPERIMENT = "simulations/configs/hospital_resnet_pneumonia.yaml"  # the simulation's YAML, unchanged
SITES = ("site-a", "site-b")


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``TAG_VAR=<tag>...`` (children inherit it)."""
    needle = f"{TAG_VAR}={tag}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(var.startswith(needle) for var in env.split(b"\0")):
            pids.append(int(proc.name))
    return pids


def kill_tagged(tag: str, sig: int = signal.SIGKILL) -> None:
    for pid in tagged_pids(tag):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Processes:
    """Starts tagged processes with their output in log files; ``stop`` ends all of them."""

    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[BinaryIO] = field(default_factory=list)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            TAG_VAR: f"{self.tag}-{name}",
            **extra,
        }

    def start(self, name: str, cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen[bytes]:
        log = (self.root / "logs" / f"{name}.log").open("ab")
        self.logs.append(log)
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=self.env(name, **env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def crash(self, name: str) -> None:
        """SIGKILL everything one component runs (a site's SuperNode, SuperExec, ClientApp)."""
        kill_tagged(f"{self.tag}-{name}")
        self.procs[name].wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM each started process group, then SIGKILL whatever still carries the tag."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        gone = lambda: not tagged_pids(self.tag)  # noqa: E731
        if not _settles(gone, 10):
            kill_tagged(self.tag)
        for proc in self.procs.values():
            proc.wait(timeout=10)
        for log in self.logs:
            log.close()
        assert _settles(gone, 10), f"processes survived the teardown: {tagged_pids(self.tag)}"


def _settles(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# --------------------------------------------------------------------------- data and credentials


def write_npz(path: Path, seed: int, n_train: int = 20, n_test: int = 16) -> Path:
    """A tiny two-class 28x28 grayscale set in MedMNIST layout (class 1 has a bright square)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", 4), ("test", n_test)):
        labels = rng.integers(0, 2, size=(n, 1))
        images = rng.integers(0, 80, size=(n, 28, 28)).astype(np.uint8)
        images[labels[:, 0] == 1, 8:20, 8:20] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def run_script(script: str, *args: str | Path) -> None:
    subprocess.run(["bash", str(DOCKER / script), *map(str, args)], check=True, capture_output=True, timeout=60)


# --------------------------------------------------------------------------- the federation


@dataclass
class Federation:
    root: Path
    procs: Processes
    port: int
    creds: Path
    site_ports: dict[str, int] = field(default_factory=dict)
    node_ids: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The Flower CLI as the coordinator's admin, with its own FLWR_HOME and connection 'confide'."""
        env = self.procs.env("cli", FLWR_HOME=str(self.root / "admin"))
        cmd = [str(BIN / "flwr"), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def nodes(self) -> dict[str, str]:
        """node id -> status ('registered', 'online', 'offline') as the SuperLink reports them."""
        out = self.flwr("supernode", "list", "confide", "--format", "json").stdout
        return {n["node-id"]: n["status"] for n in json.loads(out[out.index("{") :])["nodes"]}

    def register(self, site: str) -> str:
        res = self.flwr(
            "supernode", "register", str(self.site_dir(site) / f"{site}.pub"), "confide", "--format", "json"
        )
        assert res.returncode == 0, res.stdout + res.stderr
        return str(json.loads(res.stdout[res.stdout.index("{") :])["node-id"])

    def site_dir(self, site: str) -> Path:
        return self.root / "sites" / site

    def start_site(
        self, site: str, *, key: Path | None = None, ca: Path | None = None, insecure: bool = False, extra: tuple = ()
    ) -> None:
        """A site's SuperNode: TLS to the SuperLink, its key, its node config, and TLS on its own
        loopback Runtime API (the link to its ClientApp processes). ``insecure`` is the explicit
        plaintext flag (Flower then refuses a site key, so none is given)."""
        home = self.site_dir(site)
        link = (
            ["--insecure"]
            if insecure
            else [
                "--root-certificates", str(ca or self.creds / "ca.crt"),
                "--auth-supernode-private-key", str(key or home / f"{site}.key"),
            ]
        )  # fmt: skip
        port = self.site_ports.setdefault(site, free_port())
        node_config = (
            f"site-name='{site}' data-path='{home / 'data' / 'train.npz'}' data-format='npz' "
            f"ledger-dir='{home / 'ledger'}' max-epsilon=50"
        )
        cmd = [
            str(BIN / "flower-supernode"),
            "--superlink", self.address,
            *link,
            "--port", str(port),
            "--ssl-certfile", str(self.creds / "runtime.crt"),
            "--ssl-keyfile", str(self.creds / "runtime.key"),
            "--ssl-ca-certfile", str(self.creds / "ca.crt"),
            "--node-config", node_config,
            *extra,
        ]  # fmt: skip
        self.procs.start(site, cmd, cwd=home, FLWR_HOME=str(home / "flwr-home"))

    def submit(self, name: str, **overrides: object) -> subprocess.Popen[bytes]:
        """`flwr run <repo> confide --stream` with the simulation YAML and per-test overrides."""
        config = {
            "experiment": EXPERIMENT,
            "name": name,
            "data.path": str(self.root / "coordinator" / "data" / "test.npz"),
            "data.num_sites": 2,
            "data.max_samples": 16,
            "data.val_fraction": 0.25,
            "model.small_input": "false",
            "train.batch_size": 8,
            "train.threads": 1,
            "strategy.rounds": 2,
            **overrides,
        }
        run_config = " ".join(f"{k}={_toml(v)}" for k, v in config.items())
        cmd = [str(BIN / "flwr"), "run", str(REPO), "confide", "--stream", "--run-config", run_config]
        env = {"FLWR_HOME": str(self.root / "admin")}
        return self.procs.start(f"run-{name}", cmd, cwd=self.root, **env)

    def run_folders(self, name: str) -> list[Path]:
        runs = self.root / "coordinator" / "runs"
        return sorted(p for p in runs.glob(f"*-{name}-*") if p.is_dir()) if runs.exists() else []


def _toml(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) and value not in ("true", "false") else str(value)


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """A SuperLink with TLS, SuperNode authentication and a state database; both sites' keys
    enrolled with `flwr supernode register`; both SuperNodes online."""
    missing = [tool for tool in ("openssl", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the docker/ credential scripts need them")
    root = tmp_path_factory.mktemp("federation")
    (root / "logs").mkdir()
    creds = root / "coordinator" / "credentials"
    run_script("make-test-ca.sh", creds)
    run_script("make-test-cert.sh", creds, "runtime")  # sites' loopback Runtime API (tests share one)
    for i, site in enumerate(SITES):
        run_script("make-site-key.sh", root / "sites" / site, site)
        write_npz(root / "sites" / site / "data" / "train.npz", seed=i + 1)
    write_npz(root / "coordinator" / "data" / "test.npz", seed=9)
    procs = Processes(root)
    fed = Federation(root=root, procs=procs, port=free_port(), creds=creds)
    (root / "admin").mkdir()
    (root / "admin" / "config.toml").write_text(
        f'[superlink]\ndefault = "confide"\n\n[superlink.confide]\naddress = "{fed.address}"\n'
        f'root-certificates = "{creds / "ca.crt"}"\n'
    )
    coordinator = root / "coordinator"
    for sub in ("state", "logs"):
        (coordinator / sub).mkdir()
    try:
        cmd = [
            str(BIN / "flower-superlink"),
            "--host", "127.0.0.1",
            "--port", str(fed.port),
            "--ssl-ca-certfile", str(creds / "ca.crt"),
            "--ssl-certfile", str(creds / "superlink.crt"),
            "--ssl-keyfile", str(creds / "superlink.key"),
            "--enable-supernode-auth",
            "--database", str(coordinator / "state" / "superlink.db"),
            "--log-file", str(coordinator / "logs" / "superlink.log"),
        ]  # fmt: skip
        env = {"FLWR_HOME": str(coordinator / "flwr-home"), "CONFIDE_ROOT": str(coordinator)}
        procs.start("superlink", cmd, cwd=coordinator, **env)
        wait_for("the SuperLink to serve TLS", lambda: tls_handshake_ok(fed.port, creds / "ca.crt"), timeout=90)
        fed.node_ids = {site: fed.register(site) for site in SITES}
        for site in SITES:
            fed.start_site(site)
        online = lambda: all(fed.nodes().get(n) == "online" for n in fed.node_ids.values())  # noqa: E731
        wait_for("both sites online", online, 120, 2)
        yield fed
    finally:
        procs.stop()


def tls_handshake_ok(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
    except OSError:
        return False


# --------------------------------------------------------------------------- fast checks (no processes)


@pytest.fixture
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps new messages with the run of the ServerApp process; these tests have none."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class FakeGrid:
    """The part of Flower's Grid that FedAvg's sampling uses."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def push(messages: Iterable[Message]) -> list[Message]:
    """What the real grid does when it pushes: give each message its id."""
    out = list(messages)
    for msg in out:
        msg.metadata.__dict__["_message_id"] = msg.object_id
    return out


def site_reply(msg: Message, site: str) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.ones((2, 2), np.float32))}),
            "metrics": MetricRecord({"weight": 10.0, "num-examples": 10}),
            "site": ConfigRecord({"name": site}),
        }
    )
    return Message(content, reply_to=msg)


def superlink_error(msg: Message, code: int, reason: str) -> Message:
    """An error reply the SuperLink makes itself: its own node id as source, not the site's."""
    meta = Metadata(
        run_id=msg.metadata.run_id,
        message_id="",
        src_node_id=SUPERLINK_NODE_ID,
        dst_node_id=SUPERLINK_NODE_ID,
        reply_to_message_id=msg.metadata.message_id,
        group_id=msg.metadata.group_id,
        created_at=time.time(),
        ttl=60,
        message_type=msg.metadata.message_type,
    )
    return make_message(meta, error=Error(code=code, reason=reason))


@pytest.mark.usefixtures("serverapp_identity")
def test_lost_silent_and_expired_sites_are_recorded_by_name() -> None:
    """Proves the loss bookkeeping the deployment relies on: a site the SuperLink reports
    unavailable (heartbeat lost), a site whose message expired (Flower #6185's 'Message
    Unavailable' under load) and a site that never answers within strategy.round_timeout are each
    recorded under the site's own name (not the SuperLink's node id), and the round still
    aggregates because strategy.min_sites=1 valid update arrived."""
    recorder = RoundRecorder(None)
    exp = config_mod.load(None, {"strategy.min_sites": 1, "data.num_sites": 4, "strategy.round_timeout": 30})
    strategy = build_strategy(exp, {"w": np.zeros((2, 2), np.float32)}, recorder)
    grid = FakeGrid([11, 12, 13, 14])
    arrays = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})
    names = {11: "site-a", 12: "site-b", 13: "site-c", 14: "site-d"}

    sent = push(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    strategy.aggregate_train(1, [site_reply(m, names[m.metadata.dst_node_id]) for m in sent])
    recorder.close(None)

    sent = {m.metadata.dst_node_id: m for m in push(strategy.configure_train(2, arrays, ConfigRecord(), grid))}
    replies = [
        site_reply(sent[11], "site-a"),
        superlink_error(sent[12], ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable"),
        superlink_error(sent[13], ErrorCode.MESSAGE_UNAVAILABLE, "Error: Message Unavailable - expired (TTL)"),
    ]  # site-d (node 14) stays silent
    aggregated, _ = strategy.aggregate_train(2, replies)
    line = recorder.close(None)
    assert aggregated is not None and set(line["sites"]) == {"site-a"}
    assert [(f["site"], f["phase"]) for f in line["failures"]] == [
        ("site-b", "train"),
        ("site-c", "train"),
        ("site-d", "train"),
    ]
    assert "Node Unavailable" in line["failures"][0]["reason"]
    assert "Message Unavailable" in line["failures"][1]["reason"]
    assert line["failures"][2]["reason"].startswith("no reply within strategy.round_timeout=30s")


@pytest.mark.usefixtures("serverapp_identity")
def test_too_few_sites_left_still_stops_the_run_naming_the_lost_ones() -> None:
    """Proves the minimum is enforced for lost sites too: with strategy.min_sites=2 and one of two
    sites silent, the round stops with a message naming the silent site."""
    recorder = RoundRecorder(None)
    exp = config_mod.load(None, {"strategy.min_sites": 2, "data.num_sites": 2, "strategy.round_timeout": 5})
    strategy = build_strategy(exp, {"w": np.zeros((2, 2), np.float32)}, recorder)
    arrays = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})
    sent = {
        m.metadata.dst_node_id: m for m in push(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid([21, 22])))
    }
    with pytest.raises(ConfideError, match=r"1 valid update\(s\).*node-22: no reply within"):
        strategy.aggregate_train(1, [site_reply(sent[21], "site-a")])


def test_site_data_format_from_node_config(tmp_path: Path) -> None:
    """Proves a site can bring its data in its own file format: an image-folder site takes part
    in an npz experiment through node config data-format; a text format in an image experiment,
    or an unknown format, is refused naming the node config key."""
    for i in range(6):
        label = str(i % 2)
        (tmp_path / "site" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((28, 28), 40 + 150 * (i % 2), np.uint8)).save(tmp_path / "site" / label / f"{i}.png")
    exp = config_mod.load(REPO / EXPERIMENT, {"data.path": "coordinator.npz", "data.val_fraction": 0.5})
    spec = SiteSpec.from_node_config(
        {"site-name": "s", "data-path": str(tmp_path / "site"), "data-format": "imagefolder"}
    )
    train, held_out = site_records(exp, spec, LabelSet(("0", "1")))
    assert len(train) + len(held_out) == 6 and train.images.shape[1:] == (1, 28, 28)
    with pytest.raises(ConfigError, match="'data-format'='csv' is not image data"):
        site_records(exp, SiteSpec("s", data_path="x.csv", data_format="csv"), LabelSet(("0", "1")))
    with pytest.raises(ConfigError, match="'data-format'='xlsx' needs a 'data-path' and one of"):
        SiteSpec.from_node_config({"data-path": "x.xlsx", "data-format": "xlsx"})


def test_deployment_scripts_parse() -> None:
    """Proves every shell script of the deployment at least parses (bash -n), so a quoting slip
    in an entrypoint fails here and not inside a container."""
    scripts = [*DOCKER.glob("*.sh"), *(REPO / "scripts").glob("deploy-*.sh")]
    assert len(scripts) >= 8
    for script in scripts:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script.name}: {res.stderr}"


def fake_flower(tmp_path: Path, command: str) -> Path:
    """A stand-in for a Flower command that prints its arguments as JSON and exits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / command
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint('ARGS ' + json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    return bin_dir


def entrypoint(tmp_path: Path, script: str, command: str, **env: str) -> tuple[int, list[str], str]:
    bin_dir = fake_flower(tmp_path, command)
    full_env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "FLWR_HOME": str(tmp_path / "flwr"), **env}
    res = subprocess.run(["bash", str(DOCKER / script)], env=full_env, capture_output=True, text=True, timeout=30)
    out = res.stdout + res.stderr
    args = next((json.loads(line[5:]) for line in out.splitlines() if line.startswith("ARGS ")), [])
    return res.returncode, args, out


def test_site_entrypoint_turns_settings_into_node_config_and_tls(tmp_path: Path) -> None:
    """Proves the site container's settings reach Flower as intended: the node config Confide
    reads (name, data path and format, privacy cap, ledger), TLS to the coordinator with the
    site's key, TLS on the local Runtime API when its certificate is mounted; plaintext only with
    the explicit flag; a missing key stops the start with a message."""
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("ca.crt", "site.key", "runtime.crt", "runtime.key"):
        (creds / name).write_text("x")
    data = write_npz(tmp_path / "data" / "train.npz", seed=0)
    env = {
        "CONFIDE_SUPERLINK": "coord.example:9092",
        "CONFIDE_SITE_NAME": "st-marys",
        "CONFIDE_DATA_PATH": str(data),
        "CONFIDE_DATA_FORMAT": "npz",
        "CONFIDE_MAX_EPSILON": "3",
        "CONFIDE_MIN_NOISE_MULTIPLIER": "0.7",
        "CONFIDE_PRIVACY_POLICY": str(REPO / "docker" / "site-policy.json"),
        "CONFIDE_CREDENTIALS": str(creds),
        "CONFIDE_LEDGER_DIR": str(tmp_path / "ledger"),
        "CONFIDE_LABEL_FIELD": "finding",
        "CONFIDE_LABELS": "normal,pneumonia",
        "CONFIDE_LOG_DIR": str(tmp_path / "logs"),
    }
    code, args, out = entrypoint(tmp_path, "site-entrypoint.sh", "flower-supernode", **env)
    assert code == 0, out
    opts = dict(zip(args[::2], args[1::2], strict=False))
    assert opts["--superlink"] == "coord.example:9092" and "--insecure" not in args
    assert opts["--root-certificates"] == str(creds / "ca.crt")
    assert opts["--auth-supernode-private-key"] == str(creds / "site.key")
    assert opts["--ssl-certfile"] == str(creds / "runtime.crt") and opts["--host"] == "127.0.0.1"
    node_config = parse_config_args([opts["--node-config"]])
    spec = SiteSpec.from_node_config(node_config)
    assert (spec.name, spec.data_path, spec.data_format) == ("st-marys", str(data), "npz")
    policy = policy_from_node_config(node_config, deployed=spec.deployed)
    assert policy.ledger_dir == str(tmp_path / "ledger") and policy.min_noise_multiplier == 0.7
    assert policy.max_epsilon == 3.0 and policy.allowed_modes == ("local",)  # env override, then the file
    pins = SchemaPins.from_node_config(node_config)
    assert (pins.label_field, pins.labels, pins.text_field) == ("finding", ("normal", "pneumonia"), "")
    assert "ARGS" in (tmp_path / "logs" / "supernode.log").read_text()

    code, args, out = entrypoint(tmp_path, "site-entrypoint.sh", "flower-supernode", **env, CONFIDE_INSECURE="1")
    assert code == 0 and "--insecure" in args and "--auth-supernode-private-key" not in args
    assert "WARNING" in out

    (creds / "site.key").unlink()
    code, args, out = entrypoint(tmp_path, "site-entrypoint.sh", "flower-supernode", **env)
    assert code == 2 and not args and "site.key missing" in out


def test_coordinator_entrypoint_requires_tls_and_site_auth(tmp_path: Path) -> None:
    """Proves the coordinator container starts the SuperLink with TLS, SuperNode authentication
    and its state database by default, and without both only behind the explicit flag."""
    creds = tmp_path / "creds"
    creds.mkdir()
    env = {
        "CONFIDE_CREDENTIALS": str(creds),
        "CONFIDE_ROOT": str(tmp_path / "state"),
        "CONFIDE_LOG_DIR": str(tmp_path / "logs"),
    }
    code, args, out = entrypoint(tmp_path, "coordinator-entrypoint.sh", "flower-superlink", **env)
    assert code == 2 and "superlink.crt missing" not in out and "ca.crt missing" in out
    for name in ("ca.crt", "superlink.crt", "superlink.key"):
        (creds / name).write_text("x")
    code, args, out = entrypoint(tmp_path, "coordinator-entrypoint.sh", "flower-superlink", **env)
    assert code == 0, out
    assert "--enable-supernode-auth" in args and "--insecure" not in args
    opts = dict(zip(args[::2], args[1::2], strict=False))
    assert opts["--ssl-certfile"] == str(creds / "superlink.crt")
    assert opts["--database"] == str(tmp_path / "state" / "state" / "superlink.db")
    code, args, out = entrypoint(tmp_path, "coordinator-entrypoint.sh", "flower-superlink", **env, CONFIDE_INSECURE="1")
    assert code == 0 and "--insecure" in args and "--enable-supernode-auth" not in args and "WARNING" in out


# --------------------------------------------------------------------------- tests


REFUSALS = {
    "unlisted key": "Failed to activate SuperNode",
    "untrusted certificate": "CERTIFICATE_VERIFY_FAILED",
    # a TLS server closing a plaintext connection: one message or the other, depending on timing
    "plaintext": ("Server disconnected without sending a response", "Connection reset by peer"),
}


@pytest.mark.slow
def test_superlink_refuses_what_is_not_enrolled_or_not_tls(federation: Federation) -> None:
    """Proves the two gates, with three SuperNodes started side by side: one whose key was never
    registered is refused by the SuperLink (site authentication); one that does not trust the
    SuperLink's certificate refuses to talk to it (TLS verified, not merely on); one in plaintext
    (Flower's explicit --insecure flag) does not get through. Each exits with an error naming its
    case, and the enrolled sites stay the only nodes the SuperLink knows."""
    before = federation.nodes()
    other_ca = federation.root / "other-ca"
    run_script("make-test-ca.sh", other_ca)
    extra = ("--max-retries", "1", "--max-wait-time", "20")
    names = {}
    for case in REFUSALS:
        name = names[case] = "intruder-" + case.split()[0]
        run_script("make-site-key.sh", federation.site_dir(name), name)
        if case == "plaintext":
            federation.start_site(name, insecure=True, extra=extra)
        elif case == "untrusted certificate":
            federation.start_site(name, ca=other_ca / "ca.crt", extra=extra)
        else:
            federation.start_site(name, extra=extra)
    for case, expected in REFUSALS.items():
        name = names[case]
        try:
            code = federation.procs.procs[name].wait(timeout=120)
        finally:
            federation.procs.crash(name)
        log = federation.procs.log(name)
        assert code != 0, f"{case}: the SuperNode kept running\n{log[-2000:]}"
        options = (expected,) if isinstance(expected, str) else expected
        assert any(e in log for e in options), f"{case}: expected {expected!r}\n{log[-2000:]}"
    assert federation.nodes() == before


def start_time(pid: int) -> float:
    """A process's start as wall-clock seconds, to the kernel's tick (10 ms). psutil's
    ``create_time`` adds the start tick to /proc/stat's boot time, which is whole seconds, so it
    reads up to a second early: a ClientApp started half a second after a file was written looked
    older than the file (seen on CI). Here the boot instant comes from the same clock pair."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # field 22 of proc(5); fields[0] is field 3 (state)
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def clientapps(procs: Processes, site: str) -> set[int]:
    """Process ids of the ClientApp processes a site's SuperNode is running right now."""
    pids = set()
    for pid in tagged_pids(f"{procs.tag}-{site}"):
        try:
            if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(pid)
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_two_sites_train_then_one_is_lost_mid_round_and_rejoins(federation: Federation) -> None:
    """Proves the deployment path end to end, in one 3-round DP job (one job instead of two keeps
    the file near 3 minutes on 2 cores):
    - the simulation's YAML runs on real SuperNodes over TLS, with the SuperLink accepting only
      enrolled keys, each site reading its own file (node config data-path/data-format); rounds 1
      and 2 carry both sites' DP accounting (epsilon; counts and losses withheld), and each site's DP
      ledger lands in its own node-config ledger-dir (the coordinator keeps none);
    - site loss is survivable (Flower #4346: training stopped after one client's stream closed):
      site-b is SIGKILLed (SuperNode, SuperExec, ClientApp) while it trains round 3; with
      strategy.min_sites=1 the run completes without FAILED.txt, round 3 aggregates site-a alone
      and metrics.jsonl records site-b's loss by name (the SuperLink's node-unavailable error or
      the round timeout, whichever comes first);
    - the crashed site rejoins with the same key under the same node id."""
    overrides = {
        "strategy.rounds": 3,
        "strategy.min_sites": 1,
        "strategy.round_timeout": 120,
        "strategy.fraction_evaluate": 0.0,  # federated evaluation: tests/test_containers.py
        "privacy.mode": "local",
    }
    run = federation.submit("job", **overrides)

    def lines() -> list[dict]:
        folders = federation.run_folders("job")
        return metrics(folders[0]) if folders else []

    wait_for("rounds 1 and 2 in metrics.jsonl", lambda: len(lines()) >= 3, timeout=400, interval=0.2)
    # Round 3 is sent right after round 2's line is written; its ClientApp process may already be
    # running by the time the line is seen, so it is recognised by its start time, not as "new".
    logged = (federation.run_folders("job")[0] / "metrics.jsonl").stat().st_mtime

    def started(pid: int) -> bool:
        try:
            return start_time(pid) >= logged - 0.05
        except OSError:
            return False

    wait_for("site-b training round 3", lambda: any(map(started, clientapps(federation.procs, "site-b"))), 120, 0.2)
    federation.procs.crash("site-b")
    assert run.wait(timeout=300) == 0, federation.procs.log("run-job")[-3000:]

    (folder,) = federation.run_folders("job")
    assert not folder.name.endswith(".incomplete") and not (folder / "FAILED.txt").exists()
    final = metrics(folder)
    assert [line["round"] for line in final] == [0, 1, 2, 3]
    for line in final[1:3]:
        assert line["failures"] == [] and set(line["sites"]) == set(SITES)
        for site in SITES:
            assert "num_examples" not in line["sites"][site]["train"]  # the strict default withholds counts
            assert line["sites"][site]["train"]["epsilon"] > 0
        assert set(line["privacy"]["sites"]) == set(SITES)
    assert set(final[3]["sites"]) == {"site-a"}
    (loss,) = final[3]["failures"]
    assert loss["site"] == "site-b" and loss["phase"] == "train"
    assert "Node Unavailable" in loss["reason"] or "no reply within" in loss["reason"], loss
    for site in SITES:
        assert json.loads((federation.site_dir(site) / "ledger" / f"{site}.json").read_text())["entries"]
    assert not list((federation.root / "coordinator").rglob("ledgers"))

    node_b = federation.node_ids["site-b"]
    wait_for("the SuperLink to mark site-b offline", lambda: federation.nodes()[node_b] == "offline", 120, 3)
    federation.start_site("site-b")
    wait_for("site-b online again under its node id", lambda: federation.nodes()[node_b] == "online", 90, 2)


@pytest.mark.slow
def test_a_job_whose_serverapp_is_killed_resumes_on_the_same_federation(federation: Federation) -> None:
    """Resume in the deployment setup (TLS, enrolled SuperNodes, each site's persistent ledger):
    the SuperLink's ServerApp process is SIGKILLed after round 1 of 3 is logged and while both
    sites train round 2 (charged in their ledgers), as a restarted coordinator would be; the same
    `flwr run` with `resume=<folder>` continues it on the same SuperLink and sites: rounds 0-3 in
    one complete folder, the rounds after the kill run by a second Flower run. Each site's ledger
    holds round 2 twice (the site spent that budget) and, to end the job within its target, the
    noise of the redone round and the rounds after it is raised rather than the round refused."""
    for node in federation.node_ids.values():
        wait_for("both sites online", lambda n=node: federation.nodes().get(n) == "online", 120, 2)
    overrides = {"strategy.rounds": 3, "strategy.min_sites": 2, "strategy.fraction_evaluate": 0.0,
                 "privacy.mode": "local", "privacy.target_epsilon": 8}  # fmt: skip
    first = federation.submit("again", **overrides)

    def lines() -> list[dict]:
        folders = federation.run_folders("again")
        return metrics(folders[0]) if folders else []

    wait_for("round 1 in metrics.jsonl", lambda: len(lines()) >= 2, timeout=400, interval=0.2)
    job = federation.run_folders("again")[0].name.removesuffix(".incomplete").rsplit("-", 1)[1]

    def dpsgd(site: str) -> list[dict]:
        path = federation.site_dir(site) / "ledger" / f"{site}.json"
        entries = json.loads(path.read_text())["entries"] if path.exists() else []
        return sorted((e for e in entries if e.get("run") == job and e["kind"] == "dpsgd"), key=lambda e: e["round"])

    # round 2 is reserved in a site's ledger before it trains, and recorded by the coordinator after
    wait_for("both sites training round 2", lambda: all(len(dpsgd(s)) >= 2 for s in SITES), timeout=120, interval=0.1)
    serverapps = [
        pid
        for pid in tagged_pids(f"{federation.procs.tag}-superlink")
        if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert serverapps, "no ServerApp process under the SuperLink"
    for pid in serverapps:
        os.kill(pid, signal.SIGKILL)
    first.kill()  # `flwr run --stream` follows a run whose ServerApp is gone until stopped
    first.wait(timeout=30)
    (stopped,) = federation.run_folders("again")
    assert stopped.name.endswith(".incomplete") and len(metrics(stopped)) == 2, "round 2 was recorded before the kill"
    federation.flwr("stop", job, "confide")  # the SuperLink still lists the killed run as running

    second = federation.submit("again", **overrides, resume=f"runs/{stopped.name}")
    assert second.wait(timeout=400) == 0, federation.procs.log("run-again")[-3000:]
    (folder,) = federation.run_folders("again")
    failed = folder / "FAILED.txt"  # `flwr run --stream` exits 0 for a failed run too: say why it failed
    assert folder == stopped.with_name(stopped.name.removesuffix(".incomplete")), (
        failed.read_text() if failed.exists() else "no FAILED.txt"
    ) + federation.procs.log("run-again")[-3000:]
    final = metrics(folder)
    assert [line["round"] for line in final] == [0, 1, 2, 3]
    assert final[1]["run_id"] == job and final[3]["run_id"] != job
    assert all(set(line["sites"]) == set(SITES) and not line["failures"] for line in final[2:])
    for site in SITES:
        entries = dpsgd(site)
        assert [e["round"] for e in entries] == [1, 2, 2, 3], entries
        sigma = [e["noise_multiplier"] for e in entries]
        assert sigma[1] == sigma[0] and min(sigma[2:]) > sigma[0], sigma


@pytest.mark.slow
def test_a_sites_data_error_leaves_no_record_content_on_the_coordinator(federation: Federation) -> None:
    """The label-set attack on real processes: the job sets a label set the sites' files cannot
    match. Each site leaves out every record outside it (never refusing on a record's label) and
    then has none to train on. The coordinator learns a code only: its SuperLink log, the run's
    stream, metrics.jsonl and FAILED.txt hold no record number, label value or site file path;
    each site's own log holds the full reason."""
    for node in federation.node_ids.values():
        wait_for("both sites online", lambda n=node: federation.nodes().get(n) == "online", 120, 2)
    job = {"data.labels": "zebra,yak", "data.central_eval": "false", "strategy.min_sites": 2, "strategy.rounds": 1,
           "privacy.mode": "local"}  # fmt: skip
    run = federation.submit("leak", **job)
    run.wait(timeout=300)
    (folder,) = federation.run_folders("leak")
    failed = (folder / "FAILED.txt").read_text()
    assert "[data-error]" in failed, failed
    coordinator = federation.root / "coordinator"
    files = [p for p in coordinator.rglob("*") if p.is_file() and p.suffix in (".log", ".jsonl", ".txt")]
    seen = "\n".join(
        [federation.procs.log("run-leak"), federation.procs.log("superlink"), failed]
        + [p.read_text(errors="replace") for p in files]
    )
    for private in ("train.npz", "(record", str(federation.root / "sites"), "label '0'", "label '1'", "label 0"):
        assert private not in seen, private
    for site in SITES:
        assert "train.npz" in federation.procs.log(site)  # the full reason stays at the site


@pytest.mark.slow
def test_secure_aggregation_with_local_dp_on_tls_supernodes(federation: Federation) -> None:
    """SecAgg+ on real processes (TLS SuperLink, enrolled SuperNodes, each site its own file, each
    site's policy: local DP only): a 2-round local-DP job with secagg.enabled completes with both
    sites in every round; no training reply either site sent carries a tensor (its audit log,
    written before sending: the update leaves only as the masked vector, recorded by size and
    hash), and the masked vector's size is what the coordinator records as the site's bytes_up;
    the coordinator records no per-site update statistic (it never saw an update) and each site's
    ledger charges both rounds. The in-process checks that the sum equals plain FedAvg's, survives
    a lost site and carries central DP's noise are tests/test_secagg.py."""
    for node in federation.node_ids.values():
        wait_for("both sites online", lambda n=node: federation.nodes().get(n) == "online", 120, 2)
    job = {
        "secagg.enabled": "true",
        "privacy.mode": "local",
        "strategy.min_sites": 2,
        "strategy.fraction_evaluate": 0.0,
        "strategy.round_timeout": 300,
    }
    run = federation.submit("secure", **job)
    assert run.wait(timeout=600) == 0, federation.procs.log("run-secure")[-3000:]
    (folder,) = federation.run_folders("secure")
    failed = folder / "FAILED.txt"
    assert not failed.exists(), failed.read_text() + "".join(federation.procs.log(s)[-3000:] for s in SITES)
    lines = metrics(folder)
    assert [line["round"] for line in lines] == [0, 1, 2]
    for line in lines[1:]:
        assert line["failures"] == [] and set(line["sites"]) == set(SITES), line
        assert "update_norm" not in str(line["sites"])  # the coordinator never saw an update to measure
        assert all(line["sites"][site]["train"]["epsilon"] > 0 for site in SITES)
    job_id = lines[1]["run_id"]
    for site in SITES:
        audit = [json.loads(x) for x in next((federation.site_dir(site) / "ledger").glob("*.audit.jsonl")).open()]
        secure = [x for x in audit if x["run"] == int(job_id) and x["type"].startswith("train")]
        assert len(secure) == 8 and all(x["tensors"] == [] and x["outcome"] == "sent" for x in secure)  # 4 stages
        masked = [x for x in secure if "masked_params" in str(x["configs"])]
        assert [x["round"] for x in masked] == [1, 2]
        for entry, line in zip(masked, lines[1:], strict=True):
            vectors = entry["configs"]["secaggplus_configs"]["masked_params"]  # one per tensor
            assert any(isinstance(v, dict) and set(v) == {"bytes", "sha256"} for v in vectors)
            assert entry["bytes"] == line["sites"][site]["train"]["bytes_up"]
        ledger = json.loads((federation.site_dir(site) / "ledger" / f"{site}.json").read_text())
        assert [e["round"] for e in ledger["entries"] if str(e.get("run")) == job_id] == [1, 2]


@pytest.mark.slow
def test_documented_non_container_commands(federation: Federation) -> None:
    """Proves the deployment docs' non-container blocks (README "Deploy at a site", marked
    `doc-test: host`) work verbatim on real processes, with only the trial folder substituted (it
    is this federation's site folder, so the SuperNodes read the trial data and keep their ledgers
    where the docs look): the trial data is written, the trial job passes the sites' strict
    default policy and completes (confide submit exits 0), and site-status, the audit log and
    check-ledger read the site's ledger; then the documented refused job (privacy.site_metrics='exact')
    makes confide submit exit non-zero, and the coordinator records the refusal under each
    site's name, not its node id. Runs last: it replaces the sites' data files."""
    from tests.doc_commands import Session

    for node in federation.node_ids.values():
        wait_for("both sites online", lambda n=node: federation.nodes().get(n) == "online", 120, 2)
    env = federation.procs.env("docs", FLWR_HOME=str(federation.root / "admin"))
    session = Session(env, federation.root / "sites", [])
    done = session.run_all("host", timeout=900)
    assert [b.kind for b, _ in done] == ["host", "host expect-fail"]
    trial, refused = (res.stdout + res.stderr for _, res in done)
    assert "finished:completed" in trial and "epsilon spent" in trial and "ledger" in trial
    assert "ended as finished:failed" in refused, refused[-2000:]
    runs = sorted((federation.root / "coordinator" / "runs").glob("*-deploy-trial-*"))
    assert len(runs) == 2 and not runs[0].name.endswith(".incomplete"), runs
    lines = metrics(runs[0])
    assert [x["round"] for x in lines] == [0, 1, 2] and all(set(x["sites"]) == set(SITES) for x in lines[1:])
    failed = (runs[1] / "FAILED.txt").read_text()
    assert "site-a" in failed and "site-b" in failed and "rule 'site-metrics'" in failed, failed
    assert "site-a failed" in refused and "node-" not in failed + refused, refused[-2000:]
