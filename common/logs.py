"""Logging for Confide's own modules, kept apart from the libraries' handlers (no double lines).

By default the terminal carries Confide's lines and errors: Ray's tips, transformers' progress
bars and the libraries' deprecation warnings are left out (Flower's own console is handled by
server/flower_runtime.py, which calls ``setup``: common/ never imports flwr). ``CONFIDE_VERBOSE=1`` (``--verbose`` on
``python -m simulations.local``) keeps all of it. Set in a driver before Ray starts, the variable
reaches the Ray workers that run the sites, which call ``setup`` too. Under ``flwr run`` the
ServerApp runs in a process the SuperLink starts, which does not see the caller's environment:
there Flower's own switch, ``--federation-config "... verbose=true"``, keeps everything
(``scripts/run-local.sh`` passes it when ``CONFIDE_VERBOSE=1``).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

PACKAGES = ("common", "server", "client", "simulations", "benchmarks")
VERBOSE_ENV = "CONFIDE_VERBOSE"

# (category, message regex, module regex) for warnings.filterwarnings; "" matches anything.
WARNING_NOISE: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, "Tip: In future versions of Ray", ""),
    # Opacus' RDP accountant at the edge of its orders: a slightly looser (still valid) bound, not an error.
    (UserWarning, "Optimal order is the (largest|smallest) alpha", ""),
    # torch, once per Opacus hook on a first layer whose input needs no gradient: expected, not a fault.
    (UserWarning, "Full backward hook is firing when gradients are computed with respect to module outputs", ""),
    (FutureWarning, "", r"(transformers|opacus|ray|flwr|peft|torch)(\.|$)"),
    (DeprecationWarning, "", r"(transformers|opacus|ray|flwr|peft|torch)(\.|$)"),
)


def verbose() -> bool:
    """Whether the libraries' own lines are wanted (``CONFIDE_VERBOSE``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def setup(level: int = logging.INFO, *, loud: bool | None = None) -> None:
    """Confide's loggers print ``[confide] ...`` lines once; unless ``loud`` (default: ``verbose()``),
    the libraries' routine lines are left out."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[confide] %(levelname)s %(name)s: %(message)s"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not any(getattr(h, "_confide", False) for h in logger.handlers):
            handler._confide = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    if not (verbose() if loud is None else loud):
        quiet_libraries()


# Ray's driver reads these when it is imported: no colour codes around its "(ClientAppActor pid=...)"
# prefix (they land in redirected logs as escape sequences), and every site's line shown as it is
# instead of merged into "[repeated Nx]" with a tip about Ray's own settings.
RAY_PLAIN = {"RAY_COLOR_PREFIX": "0", "RAY_DEDUP_LOGS": "0"}


def quiet_libraries() -> None:
    """Leave the libraries' routine lines out of the terminal (warnings and errors stay)."""
    for category, message, module in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for key, value in RAY_PLAIN.items():
        os.environ.setdefault(key, value)
    _quiet_transformers()


def _quiet_transformers() -> None:
    # Read when huggingface_hub / transformers are imported (and by Ray workers started later).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # already imported: tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
