"""Every process a simulation starts is gone when it ends.

Flower's simulation engine stops Ray with ``ray.shutdown()`` when a run ends normally, but not
always when the ServerApp fails or the run is interrupted: Ray's DashboardAgent and
RuntimeEnvAgent, and ``ray::ClientAppActor`` workers, were seen outliving the run by minutes
(~225 MB), and a sweep's next cell started beside them. ``reaped`` ends the processes started in
its block: first ``ray.shutdown()``, then SIGTERM to any descendant still alive, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator

import psutil

log = logging.getLogger(__name__)

GRACE_SECONDS = 5.0


def descendants() -> dict[int, psutil.Process]:
    """This process's children, grandchildren, ... by pid."""
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


@contextlib.contextmanager
def reaped(shutdown_ray: bool = True, spare: Callable[[], set[int]] | None = None) -> Iterator[None]:
    """Run the block; then stop every process it started (and Ray, with ``shutdown_ray``: a private
    instance. An attached cluster is left running, its processes are not ours) except the
    processes ``spare()`` names at the end, and theirs (actors kept for the next simulation)."""
    before = set(descendants())
    try:
        yield
    finally:
        if shutdown_ray:
            _shutdown_ray()
        now = descendants()
        kept = _with_descendants(spare() if spare else set(), now)
        _stop([p for pid, p in now.items() if pid not in before and pid not in kept])


def _with_descendants(pids: set[int], procs: dict[int, psutil.Process]) -> set[int]:
    out = set(pids)
    for pid in pids:
        if pid in procs:
            with contextlib.suppress(psutil.Error):
                out |= {c.pid for c in procs[pid].children(recursive=True)}
    return out


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as exc:  # on the way out of a run: a failed shutdown must not hide its result
        log.debug("ray.shutdown failed: %s", exc)


def _stop(procs: list[psutil.Process]) -> None:
    alive = [p for p in procs if _running(p)]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, still = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(still, timeout=GRACE_SECONDS)
    if alive:
        log.debug("stopped %d leftover process(es) of the simulation", len(alive))


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# Run by a detached interpreter: wait for the given pids to end, SIGTERM, then SIGKILL.
_REAPER = """
import sys, time, psutil
time.sleep(float(sys.argv[1]))
procs = []
for pid in sys.argv[2:]:
    try:
        procs.append(psutil.Process(int(pid)))
    except psutil.Error:
        pass
for p in procs:
    try:
        p.terminate()
    except psutil.Error:
        pass
_, still = psutil.wait_procs(procs, timeout=5)
for p in still:
    try:
        p.kill()
    except psutil.Error:
        pass
"""


def reap_after_exit(delay: float = 1.0) -> None:
    """Have every descendant of this process stopped ``delay`` seconds from now by a detached
    process, for a process about to leave with ``os._exit`` from a thread other than the one using
    Ray: stopping Ray in-process there (or its raylet before leaving) makes Ray's core worker end
    the process first, with exit code 1 instead of the caller's."""
    pids = [str(pid) for pid in descendants()]
    if not pids:
        return
    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(delay), *pids],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
