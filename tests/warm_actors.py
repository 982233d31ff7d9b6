"""What a kept simulation actor forgets before its next simulation (server/flower_internals.py,
``warm_actors``): every per-process cache of Confide's modules, so the actor starts the next run as
a new process would, except for the libraries it has already imported."""

from __future__ import annotations

import sys

PACKAGES = ("client", "common", "server", "simulations")


def forget_process_state() -> None:
    from common import site

    site.clear_caches()
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in PACKAGES:
            continue
        for value in list(vars(module).values()):
            clear = getattr(value, "cache_clear", None)
            if callable(clear) and hasattr(value, "cache_info"):  # a functools cache
                clear()
