"""How Confide fits into the Flower process it runs in: Flower's console (quiet by default, all
of it back with the verbose switch) and Flower's exit path (a run stopped by ``flwr stop``, Ctrl-C
or kill writes why, common/stopping.py). Kept out of common/, which never imports flwr.

Flower has its own console handler on the ``flwr`` logger. By default it shows warnings and
errors only, less its notices about its own defaults and the traceback it logs around a run
Confide ended with one clear line (``RunFailed``); ``CONFIDE_VERBOSE=1`` or Flower's own
verbose switch (``--federation-config "... verbose=true"``, which sets that handler to DEBUG)
keep every line.
"""

from __future__ import annotations

import logging

from flwr.common.logger import console_handler
from flwr.supercore.exit import add_exit_handler

from common import logs, stopping
from common.errors import RunFailed
from server import flower_internals

# Flower WARNING lines about Flower's own defaults or Confide's deliberate choices, not the run.
FLOWER_NOISE = (
    "Since flwr 1.32, default simulated SuperNodes",
    flower_internals.SIMULATION_DEPRECATION,
    "fraction_evaluate is set to 0.0",
    "Manually terminating",  # its actors at the end of every simulation
)
_exit_handler_installed = False


def setup_logging(level: int = logging.INFO) -> None:
    """Confide's logging (common/logs.py) plus Flower's console, quiet or verbose."""
    loud = logs.verbose() or flower_verbose()
    logs.setup(level, loud=loud)
    # Opacus calls logging.basicConfig on import: Flower's records would print twice (and its
    # DEBUG ones once) through the root handler. Flower has its own console handler.
    logging.getLogger("flwr").propagate = False
    if loud:  # everything back, also after an earlier quiet setup in this process
        for noise in [f for f in console_handler.filters if isinstance(f, _DropFlowerNoise)]:
            console_handler.removeFilter(noise)
        if console_handler.level > logging.INFO:
            console_handler.setLevel(logging.INFO)
    else:
        console_handler.setLevel(logging.WARNING)
        if not any(isinstance(f, _DropFlowerNoise) for f in console_handler.filters):
            console_handler.addFilter(_DropFlowerNoise())


def flower_verbose() -> bool:
    """Flower's own verbose switch set its console to DEBUG."""
    return console_handler.level < logging.INFO


class _DropFlowerNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RunFailed):
            # Flower's "ServerApp/Simulation raised an exception" with the traceback of a run
            # Confide stopped on purpose: its one line is already printed (server/app.py), and
            # the run's status ("finished:failed" and its details) still says so.
            return False
        message = record.getMessage()
        return not any(noise in message for noise in FLOWER_NOISE)


def install_exit_handler() -> None:
    """Run ``stopping.stop`` from Flower's exit path (its handler for SIGINT/SIGTERM in the
    simulation and ServerApp processes), once per process."""
    global _exit_handler_installed
    if _exit_handler_installed:
        return
    add_exit_handler(lambda: stopping.stop(flower_signal()), run_before_force_exit=True)
    _exit_handler_installed = True


def flower_signal() -> int | None:
    """The signal Flower's handler is exiting on (server/flower_internals.py)."""
    return flower_internals.exiting_signal()
