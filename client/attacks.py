"""What a malicious simulated site sends instead of its honest update (client/faults.py applies it).

Every attack is a pure function of the model the site was sent (``sent``), the weights it trained
(``got``) and the attack's parameters; only floating-point tensors are changed (integer buffers
such as a step counter pass through). The update is ``u = got - sent``; the site sends
``sent + u'`` with

- ``scale``: u' = s u;
- ``flip``:  u' = -s u;
- ``evade``: u' = -s u with s = 0.95 k where the coordinator rejects updates above k x the round's
  median norm (``strategy.reject_norm_ratio``): the attacker's own honest norm stands in for the
  median it cannot see, so the flipped update sits just under the threshold; s = corrupt_scale
  where no norm rule rejects;
- ``bias``:  u' = u + s ||u|| d, with d a unit direction fixed by the experiment's seed alone, so
  it is the same every round and at every colluding site: a small constant push that a norm rule
  never sees (||u'|| <= (1 + s) ||u||).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.config import ExperimentConfig

Weights = Mapping[str, np.ndarray]

# The fraction of the norm rule's threshold an "evade" attacker aims at: close enough to carry
# nearly all it may, far enough that its guess of the median (its own norm) rarely puts it over.
EVADE_MARGIN = 0.95


def _floating(weights: Weights) -> list[str]:
    return [k for k, v in weights.items() if np.asarray(v).dtype.kind == "f"]


def update_norm(sent: Weights, got: Weights) -> float:
    """L2 norm of ``got - sent`` over the floating-point tensors."""
    return float(
        np.sqrt(sum(float(np.sum((np.asarray(got[k], np.float64) - sent[k]) ** 2)) for k in _floating(got)))
    )


def evade_scale(exp: ExperimentConfig) -> float:
    """The multiple s of its own update an "evade" attacker sends sign-flipped (see the module)."""
    ratio = exp.strategy.reject_norm_ratio
    return min(exp.faults.corrupt_scale, EVADE_MARGIN * ratio) if ratio else exp.faults.corrupt_scale


def bias_direction(reference: Weights, seed: int) -> dict[str, np.ndarray]:
    """A unit-norm direction over the floating-point tensors of ``reference`` (random signs, equal
    magnitudes), the same for every site and round of an experiment with this seed."""
    rng = np.random.default_rng([seed, 0xB1A5])
    keys = _floating(reference)
    size = sum(np.asarray(reference[k]).size for k in keys)
    return {k: rng.choice([-1.0, 1.0], size=np.shape(reference[k])) / np.sqrt(size) for k in keys}


def attack(
    kind: str, sent: Weights, got: Weights, scale: float, direction: Weights | None = None
) -> dict[str, np.ndarray]:
    """The weights a site corrupting its update with ``kind`` sends (``scale``: s in the module's
    formulas; ``direction``: d, for ``bias``), in the dtypes it trained."""
    keys = set(_floating(got))
    push = 0.0
    if kind == "bias":
        if direction is None:
            raise ValueError("the 'bias' attack needs its direction")
        push = scale * update_norm(sent, got)
    out = {}
    for k, v in got.items():
        new = np.asarray(v)
        if k not in keys:
            out[k] = new
            continue
        old = np.asarray(sent[k], np.float64)
        delta = new.astype(np.float64) - old
        if kind == "nan":
            bad = np.full_like(delta, np.nan)
        elif kind == "scale":
            bad = old + scale * delta
        elif kind in ("flip", "evade"):
            bad = old - scale * delta
        elif kind == "bias":
            bad = old + delta + push * np.asarray(direction[k], np.float64)  # type: ignore[index]
        else:
            raise ValueError(f"unknown attack {kind!r}")
        out[k] = np.asarray(bad, new.dtype)
    return out


def attack_scale(exp: ExperimentConfig) -> float:
    """s for the experiment's ``faults.corrupt`` kind."""
    return evade_scale(exp) if exp.faults.corrupt == "evade" else exp.faults.corrupt_scale


def corrupting(exp: ExperimentConfig, site: int) -> bool:
    """Whether partition ``site`` is one of the colluding sites faults.corrupt_site .. + corrupt_count - 1."""
    first = exp.faults.corrupt_site
    return first >= 0 and first <= site < first + exp.faults.corrupt_count
