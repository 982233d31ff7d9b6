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
  never sees (||u'|| <= (1 + s) ||u||);
- ``disguise``: the flip dressed up for the direction rule (``strategy.min_cosine_to_median``):
  u' = -u + g ||u|| sign(u) / sqrt(n), n floating-point values, with g the smallest push along
  the honest sign pattern that lifts the cosine of u' to u to c = threshold + DISGUISE_MARGIN (the
  attacker's own update standing in for the median it cannot see), then scaled to the norm an
  ``evade`` attacker sends. The largest coordinates of the update keep their flipped sign; the
  uniform push turns the small ones honest. With rho = ||u||_1 / (sqrt(n) ||u||), the cosine of
  sign(u) to u, g solves (g rho - 1) / sqrt(1 - 2 g rho + g^2) = c; if c >= rho no push reaches it
  and the attacker sends the sign pattern alone (cosine rho). Without the direction rule it is the
  plain ``evade`` flip.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.config import ExperimentConfig

Weights = Mapping[str, np.ndarray]

# The fraction of the norm rule's threshold an "evade" attacker aims at: close enough to carry
# nearly all it may, far enough that its guess of the median (its own norm) rarely puts it over.
EVADE_MARGIN = 0.95
# How far above the direction rule's threshold a "disguise" attacker aims the cosine to its own
# update: the cosine to the round's median update, which the rule reads, is lower.
DISGUISE_MARGIN = 0.1


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


def disguise_push(rho: float, cosine: float) -> float:
    """g such that -u + g ||u|| sign(u) / sqrt(n) has cosine ``cosine`` to u, where ``rho`` is the
    cosine of sign(u) to u (see the module); inf when ``cosine`` >= ``rho`` (out of reach)."""
    if cosine >= rho:
        return float("inf")
    c2 = cosine * cosine
    if abs(rho * rho - c2) < 1e-12:  # c = -rho: the squared equation below is linear
        return 1.0 / (2.0 * rho)
    # Of the two roots of (rho^2 - c^2) g^2 - 2 rho (1 - c^2) g + (1 - c^2) = 0, the one with
    # g rho - 1 of the sign of c (the other solves the squared equation only, with cosine -c).
    return float((rho * (1 - c2) + cosine * np.sqrt((1 - c2) * (1 - rho * rho))) / (rho * rho - c2))


def _disguised(sent: Weights, got: Weights, keys: list[str], scale: float, cosine: float) -> dict[str, np.ndarray]:
    """The ``disguise`` update per tensor in ``keys`` (see the module), of norm ``scale`` ||u||."""
    delta = {k: np.asarray(got[k], np.float64) - np.asarray(sent[k], np.float64) for k in keys}
    norm = np.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
    count = sum(d.size for d in delta.values())
    if norm == 0:
        return delta
    rho = sum(float(np.sum(np.abs(d))) for d in delta.values()) / (np.sqrt(count) * norm)
    g = disguise_push(rho, cosine)
    unit = norm / np.sqrt(count)  # ||u|| sign(u) / sqrt(n), coordinate by coordinate
    if np.isinf(g):
        out = {k: unit * np.sign(d) for k, d in delta.items()}
    else:
        out = {k: -d + g * unit * np.sign(d) for k, d in delta.items()}
    length = np.sqrt(sum(float(np.sum(d * d)) for d in out.values()))
    return {k: d * (scale * norm / length) for k, d in out.items()}


def attack_cosine(exp: ExperimentConfig) -> float:
    """The cosine to its own update a ``disguise`` attacker aims at: DISGUISE_MARGIN above the
    direction rule's threshold, or -1 (the plain flip) where that rule is off."""
    threshold = exp.strategy.min_cosine_to_median
    return -1.0 if threshold <= -1 else min(1.0, threshold + DISGUISE_MARGIN)


def attack(
    kind: str, sent: Weights, got: Weights, scale: float, direction: Weights | None = None, cosine: float = -1.0
) -> dict[str, np.ndarray]:
    """The weights a site corrupting its update with ``kind`` sends (``scale``: s in the module's
    formulas; ``direction``: d, for ``bias``; ``cosine``: c, for ``disguise``), in the dtypes it
    trained."""
    keys = set(_floating(got))
    push = 0.0
    if kind == "bias":
        if direction is None:
            raise ValueError("the 'bias' attack needs its direction")
        push = scale * update_norm(sent, got)
    disguised = _disguised(sent, got, sorted(keys), scale, cosine) if kind == "disguise" else {}
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
        elif kind == "disguise":
            bad = old + disguised[k]
        elif kind == "bias":
            bad = old + delta + push * np.asarray(direction[k], np.float64)  # type: ignore[index]
        else:
            raise ValueError(f"unknown attack {kind!r}")
        out[k] = np.asarray(bad, new.dtype)
    return out


def attack_scale(exp: ExperimentConfig) -> float:
    """s for the experiment's ``faults.corrupt`` kind."""
    return evade_scale(exp) if exp.faults.corrupt in ("evade", "disguise") else exp.faults.corrupt_scale


def corrupting(exp: ExperimentConfig, site: int) -> bool:
    """Whether partition ``site`` is one of the colluding sites faults.corrupt_site .. + corrupt_count - 1."""
    first = exp.faults.corrupt_site
    return first >= 0 and first <= site < first + exp.faults.corrupt_count
