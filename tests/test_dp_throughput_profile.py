"""benchmarks/dp_throughput_profile.py: the summary keeps, per model and variant, the median over
repeats of every phase's CPU seconds and live-heap peak (three repeats 1.0, 4.0, 2.0 -> 2.0, where
the mean would be 2.33), keeps the variants apart, and a phase only one repeat saw counts as 0 in
the others."""

from __future__ import annotations

import pytest

from benchmarks.dp_throughput_profile import summarize

pytestmark = pytest.mark.unit


def run(variant: str, forward: float, heap: float, **extra: float) -> dict:
    return {
        "model": "minilm", "variant": variant, "batch_size": 32, "steps": 2,
        "cpu_s_per_step": {"forward": forward, **extra}, "heap_peak_mib": {"backward": heap},
    }  # fmt: skip


def test_medians_per_variant_and_phase() -> None:
    runs = [
        run("plain", 1.0, 800.0),
        run("bookkeeping", 1.1, 850.0, **{"per-sample norms": 0.3}),
        run("plain", 4.0, 860.0),
        run("bookkeeping", 1.3, 830.0),
        run("plain", 2.0, 810.0),
        run("bookkeeping", 1.2, 840.0, **{"per-sample norms": 0.2}),
    ]
    plain, bk = summarize(runs)
    assert (plain["variant"], plain["repeats"]) == ("plain", 3)
    assert plain["cpu_s_per_step"] == {"forward": 2.0} and plain["heap_peak_mib"] == {"backward": 810.0}
    assert bk["cpu_s_per_step"] == {"forward": 1.2, "per-sample norms": 0.2}  # median of 0.3, 0, 0.2
    assert bk["heap_peak_mib"] == {"backward": 840.0}
