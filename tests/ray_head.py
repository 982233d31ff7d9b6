"""One Ray head for a whole test session: the sim tier's simulations attach to it (RAY_ADDRESS,
simulations/ray_cluster.py) instead of each starting and stopping a private Ray instance.

The head is ``ray start --head --block`` in its own short temp folder, sized like the private
instance a simulation would start on this machine (one CPU per core, no GPU), stopped by PID at
the end of the session together with everything it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfideError
from simulations.ray_cluster import probe_cluster

START_TIMEOUT_S = 180.0  # a loaded 2-core machine takes tens of seconds
OBJECT_STORE_BYTES = 300 * 2**20  # model weights of a few sites; Ray's default takes 30% of RAM


@dataclass
class RayHead:
    address: str
    proc: subprocess.Popen[bytes]
    temp: Path

    def log_tail(self) -> str:
        path = self.temp / "head.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_cli() -> str:
    local = Path(sys.executable).with_name("ray")
    cli = str(local) if local.exists() else shutil.which("ray")
    if cli is None:
        raise RuntimeError("the `ray` CLI is not installed next to this Python")
    return cli


def start_head(cpus: int | None = None) -> RayHead:
    """Start the head and wait until its GCS answers; raise RuntimeError with its log if it does not."""
    temp = Path(tempfile.mkdtemp(prefix="cfhead-", dir="/tmp"))  # short: Ray's unix sockets live under it
    port = free_port()
    cmd = [ray_cli(), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1"]
    cmd += ["--num-cpus", str(cpus or os.cpu_count() or 1), "--num-gpus", "0", "--include-dashboard", "false"]
    cmd += ["--disable-usage-stats", "--temp-dir", str(temp), "--object-store-memory", str(OBJECT_STORE_BYTES)]
    cmd += ["--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with (temp / "head.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=temp, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    head = RayHead(f"127.0.0.1:{port}", proc, temp)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_head(head)
            raise RuntimeError(f"`ray start --head` exited with {proc.returncode}: {head.log_tail()}")
        try:
            probe_cluster(head.address, timeout=10)
            return head
        except ConfideError:
            time.sleep(1)
    tail = head.log_tail()
    stop_head(head)
    raise RuntimeError(f"the test Ray head at {head.address} did not answer within {START_TIMEOUT_S:g} s: {tail}")


def stop_head(head: RayHead) -> None:
    """SIGTERM `ray start --block` (it stops the node's processes); SIGKILL, after 30 s, what is
    left of its process tree and any process naming this head's temp folder."""
    import psutil

    try:
        root = psutil.Process(head.proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if head.proc.poll() is None:
        head.proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=30)
    strays = [p for p in psutil.process_iter(["cmdline"]) if str(head.temp) in " ".join(p.info["cmdline"] or [])]
    for p in [*alive, *strays]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        head.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    shutil.rmtree(head.temp, ignore_errors=True)
