"""The attacks benchmark's table (benchmarks/attacks.py): a flip or disguise cell that sends the
very update the evade cell sent under a rule shows the evade figure, marked, and only there; a
non-IID split is a setup of its own, never averaged with the IID cells."""

from __future__ import annotations

import pytest

from benchmarks.attacks import same_as_evade, summary

pytestmark = pytest.mark.unit


def cell(rule: str, attack: str, final: float, partitioner: str = "iid") -> dict:
    return {"setup": "1of5", "rule": rule, "attack": attack, "final": final, "partitioner": partitioner}


def test_flip_is_the_evade_update_only_without_a_norm_rule_and_disguise_only_without_the_direction_rule() -> None:
    assert same_as_evade("fedavg", "flip") and same_as_evade("bound+cosine", "flip")
    assert not same_as_evade("reject3", "flip") and not same_as_evade("bound+reject3", "flip")
    assert same_as_evade("reject3", "disguise") and same_as_evade("krum", "disguise")
    assert not same_as_evade("bound+cosine", "disguise")
    assert not same_as_evade("fedavg", "bias")


def test_the_table_fills_same_update_cells_marked_and_keeps_dirichlet_apart() -> None:
    """FedAvg clean 0.9 and evade 0.1 (-80.0 points); reject3 flip run 0.85 (-5.0), its evade 0.5;
    a Dirichlet FedAvg clean 0.6 is its own row, not averaged into 0.9."""
    out = summary([cell("fedavg", "clean", 0.9), cell("fedavg", "evade", 0.1), cell("reject3", "evade", 0.5),
                   cell("reject3", "flip", 0.85), cell("fedavg", "clean", 0.6, "dirichlet")])  # fmt: skip
    rows = {tuple(r.split(" | ")[:2]): r for r in out.splitlines()}
    assert "0.100 (-80.0) = evade" in rows[("| 1of5", "fedavg")]  # flip column of FedAvg
    assert "0.850 (-5.0)" in rows[("| 1of5", "reject3")] and "= evade" not in rows[("| 1of5", "reject3")]
    assert "| 0.900 |" in rows[("| 1of5", "fedavg")]
    assert "| 0.600 |" in rows[("| 1of5 dirichlet", "fedavg")]
