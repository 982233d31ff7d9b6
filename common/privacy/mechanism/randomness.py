"""Secret randomness for DP noise and Poisson sampling.

Both must come from the operating system's entropy, never from a seed the coordinator knows
(the experiment seed): with the seed it could regenerate and subtract the noise. The only
exception is ``study_noise_seeds``, a switch that simulated privacy-utility studies use to make a
sweep reproducible; it voids the guarantee against anyone who knows the seed, and no deployed
site enters it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_STUDY_SEEDS: ContextVar[Callable[[], int] | None] = ContextVar("confide_study_noise_seeds", default=None)
_FORBIDDEN = False  # set for the life of a deployed site's process: study seeds can never apply


class StudySeedsForbidden(RuntimeError):
    """Study seeds were asked for in a process that serves a deployed site."""


def forbid_study_seeds() -> None:
    """Called by a deployed site's ClientApp before it touches any data: from then on this
    process draws DP noise and sampling only from the OS's entropy, and any attempt to seed them
    (``study_noise_seeds``, entered before or after) raises instead."""
    global _FORBIDDEN
    _FORBIDDEN = True


def secret_generator() -> torch.Generator:
    """A generator seeded from the OS's entropy (inside ``study_noise_seeds``: from the study)."""
    seeds = _STUDY_SEEDS.get()
    if seeds is not None and _FORBIDDEN:
        raise StudySeedsForbidden("DP noise seeded by a study in a deployed site's process: refused")
    return torch.Generator().manual_seed(seeds() if seeds else int.from_bytes(os.urandom(8), "little"))


@contextmanager
def study_noise_seeds(seeds: Callable[[], int]) -> Iterator[None]:
    """Simulated studies only: DP noise and sampling seeds from ``seeds``. Voids the DP guarantee
    against anyone who knows the seed; only simulations/study/determinism.py's mod enters it (it is not
    in the app bundle sent to sites), and a deployed site's process refuses it."""
    if _FORBIDDEN:
        raise StudySeedsForbidden("study noise seeds cannot be used in a deployed site's process")
    token = _STUDY_SEEDS.set(seeds)
    try:
        yield
    finally:
        _STUDY_SEEDS.reset(token)
