"""(epsilon, delta) accounting over a party's whole history of DP mechanisms.

A history is a list of (noise multiplier, sample rate, steps) entries, Opacus's own format: a
DP-SGD round is (sigma, q, steps); a Gaussian release of a bounded statistic is (sigma, 1.0, 1).
Epsilon is always the composition of the *whole* history (every round, run and release), never
of one round. Composition is Opacus's RDP or PRV accountant.

delta: the default is ``min(1e-5, 1 / (10 n))``, with n the number of protected units (a site's
records for record-level DP, the number of sites for site-level DP). (epsilon, delta)-DP with
delta >= 1/n is vacuous (publishing one random unit's raw data satisfies (0, 1/n)-DP), so such a
delta is refused and no epsilon is ever reported for it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from common.errors import ConfigError, PrivacyError

HistoryEntry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)
DELTA_CAP = 1e-5
ACCOUNTANTS = ("rdp", "prv")


def default_delta(n: int) -> float:
    """delta well below 1/n: ``min(1e-5, 1/(10 n))``."""
    return min(DELTA_CAP, 1.0 / (10 * max(n, 1)))


def check_delta(delta: float, n: int, key: str, unit: str) -> float:
    """``delta`` if it is meaningful for n protected units, else ConfigError naming ``key``."""
    if not 0 < delta < 1:
        raise ConfigError(f"config key '{key}'={delta:g} must be in (0, 1)")
    if delta >= 1.0 / n:
        raise ConfigError(
            f"config key '{key}'={delta:g} must be below 1/n = 1/{n} ({unit}); "
            f"a delta that large is no guarantee (default: min(1e-5, 1/(10 n)) = {default_delta(n):.3g})"
        )
    return delta


def make_accountant(kind: str, history: list[HistoryEntry]):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if kind not in ACCOUNTANTS:
        raise ConfigError(f"config key 'privacy.accountant' must be one of {', '.join(ACCOUNTANTS)}; got {kind!r}")
    accountant = PRVAccountant() if kind == "prv" else RDPAccountant()
    accountant.history = grouped(history)
    return accountant


def grouped(history: list[HistoryEntry]) -> list[tuple[float, float, int]]:
    """The history with every repeat of one (noise multiplier, sample rate) folded into one entry
    of their summed steps, in order of first appearance. The composition is the same mechanism
    (RDP adds up step by step, PRV composes a mechanism with itself ``steps`` times), but its cost
    is per distinct mechanism, not per ledger entry: a site that trains one entry a round for
    hundreds of rounds would otherwise pay seconds of accounting every round, growing with its history."""
    steps: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        key = (float(s), float(q))
        steps[key] = steps.get(key, 0) + int(n)
    return [(s, q, n) for (s, q), n in steps.items()]


def epsilon(history: list[HistoryEntry], delta: float, kind: str = "rdp", n: int | None = None) -> float:
    """Epsilon of the composition of every entry (0 for an empty history).

    ``n``: the number of protected units, to refuse a delta >= 1/n. A non-finite or negative
    result (a delta so large the accountant's bound degenerates) is refused, never returned.
    """
    if not 0 < delta < 1 or (n is not None and delta >= 1.0 / n):
        raise PrivacyError(f"no epsilon for delta={delta:g}" + (f" with n={n}" if n is not None else ""))
    if not history:
        return 0.0
    if any(s <= 0 for s, _, _ in history):
        return math.inf
    return _composed(tuple(grouped(history)), delta, kind)


@functools.lru_cache(maxsize=256)
def _composed(groups: tuple[tuple[float, float, int], ...], delta: float, kind: str) -> float:
    """Epsilon of the grouped history, kept per process: a round's plan and its check under the
    ledger's lock project the same history, and each accountant call costs a tenth of a second."""
    try:
        eps = float(make_accountant(kind, list(groups)).get_epsilon(delta=delta))
    except (RuntimeError, ValueError) as exc:  # e.g. PRV's "Cannot compute epsilon" near delta = 1
        raise PrivacyError(f"the {kind} accountant cannot compute epsilon for delta={delta:g} ({exc})") from None
    if math.isnan(eps) or eps < 0:
        raise PrivacyError(f"the {kind} accountant gave epsilon={eps} for delta={delta:g}; refusing to report it")
    return eps


@functools.lru_cache(maxsize=256)
def calibrate(target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: str = "rdp") -> float:
    """Noise multiplier that spends ``target_epsilon`` over ``steps`` (within 0.1% of it, never above).
    Kept per process: a site plans every round of a job with the same inputs, and every accountant
    call costs a tenth of a second or more. The answer is bracketed by doubling or halving from 1,
    then found by regula falsi (``_solve``): about 8 accountant calls where Opacus's bisection
    (``get_noise_multiplier``, same contract) takes 15-20."""
    if not target_epsilon > 0:
        raise ConfigError(f"a target epsilon must be > 0 to calibrate noise for it; got {target_epsilon:g}")

    def over(sigma: float) -> float:
        try:
            return epsilon([(sigma, sample_rate, steps)], delta, kind) - target_epsilon
        except PrivacyError:  # the accountant cannot bound it: as good as spending too much
            return math.inf

    low = high = 1.0
    over_low = over_high = over(1.0)
    for _ in range(64):
        if over_high > 0:  # even ``high`` overshoots: double it
            low, over_low = high, over_high
            high *= 2
            over_high = over(high)
        elif over_low <= 0:  # even ``low`` stays within: halve it
            high, over_high = low, over_low
            low /= 2
            over_low = over(low)
        else:
            return _solve(over, target_epsilon, low, high, over_low, over_high)
    raise PrivacyError(
        f"no noise multiplier spends epsilon {target_epsilon:g} (delta={delta:g}, q={sample_rate:g}, {steps} steps)"
    )


def calibrate_rest(
    target_epsilon: float,
    delta: float,
    spent: list[HistoryEntry],
    block: tuple[float, int],
    blocks: int,
    noise_range: tuple[float, float],
    kind: str = "rdp",
    n: int | None = None,
) -> float | None:
    """Noise multiplier in ``noise_range`` = (one known to overshoot, the largest allowed) for
    ``blocks`` more blocks of ``block`` = (sample rate, steps) such that, composed after ``spent``,
    the total epsilon is within ``target_epsilon`` (within 0.1% below it, never above). None when
    even the largest allowed noise overshoots."""
    q, steps = block

    def total(sigma: float) -> float:
        return epsilon(spent + [(sigma, q, steps)] * blocks, delta, kind, n)

    low, high = noise_range
    over_high = total(high) - target_epsilon
    if over_high > 0:
        return None
    over_low = total(low) - target_epsilon
    return _solve(lambda sigma: total(sigma) - target_epsilon, target_epsilon, low, high, over_low, over_high)


def _solve(
    over: Callable[[float], float], target_epsilon: float, low: float, high: float, over_low: float, over_high: float
) -> float:
    """The noise multiplier in [low, high] whose ``over`` (epsilon minus the target, decreasing in
    the noise) is within 0.1% of the target below 0, given ``over_low`` > 0 >= ``over_high``.

    Regula falsi, Illinois variant: [low, high] always brackets the answer with high within the
    target; a few accountant calls (each composes the whole history) bring high within 0.1% of
    the target where bisection takes a dozen. ``weight_*``: the endpoint values the next secant
    uses, halved at an endpoint kept twice in a row so the bracket shrinks from both sides; an
    endpoint the accountant cannot bound (infinite) gives way to bisection."""
    weight_low, weight_high, kept = over_low, over_high, ""
    while -over_high > target_epsilon * 1e-3 and high - low > high * 1e-9:
        mid = (
            high - weight_high * (high - low) / (weight_high - weight_low)
            if math.isfinite(weight_low)
            else (low + high) / 2
        )
        if not low < mid < high:
            mid = (low + high) / 2
        over_mid = over(mid)
        if over_mid > 0:
            low, over_low, weight_low = mid, over_mid, over_mid
            weight_high = weight_high / 2 if kept == "high" else weight_high
            kept = "high"
        else:
            high, over_high, weight_high = mid, over_mid, over_mid
            weight_low = weight_low / 2 if kept == "low" else weight_low
            kept = "low"
    return high
