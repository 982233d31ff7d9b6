"""One finished run folder -> the numbers a study reports (from its ``metrics.jsonl``).

Final and best (over rounds 1..R) accuracy and macro-F1 on the server's test set ("central")
and for the worst site's held-out set; the privacy spent (max over sites); bytes of weights
moved; per-round curves and every site's final held-out accuracy for the plots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.errors import ConfideError
from common.metrics import JsonlLog

NAN = math.nan


def summarize_run(run: Path) -> dict[str, Any]:
    rounds = JsonlLog(run / "metrics.jsonl").read()
    trained = [r for r in rounds if r["round"] >= 1]
    if not trained:
        raise ConfideError(f"run {run} recorded no training round")
    curve = [_round_point(r) for r in rounds]
    final = curve[-1]
    best = {
        key: _max(p[key] for p in curve[1:])
        for key in ("central_accuracy", "central_macro_f1", "worst_site_accuracy", "worst_site_macro_f1")
    }
    metrics = {
        "final_accuracy": final["central_accuracy"],
        "final_macro_f1": final["central_macro_f1"],
        "best_accuracy": best["central_accuracy"],
        "best_macro_f1": best["central_macro_f1"],
        "final_sites_accuracy": final["sites_accuracy"],
        "final_worst_site_accuracy": final["worst_site_accuracy"],
        "final_worst_site_macro_f1": final["worst_site_macro_f1"],
        "best_worst_site_accuracy": best["worst_site_accuracy"],
        "best_worst_site_macro_f1": best["worst_site_macro_f1"],
        **privacy_spent(trained[-1].get("privacy", {})),
        "bytes_communicated": float(sum(_round_bytes(r) for r in trained)),
        "site_failures": float(sum(len(r.get("failures", [])) for r in trained)),
        **baseline_metrics(run),
    }
    return {"metrics": metrics, "curve": curve, "site_accuracy": _site_accuracy(trained)}


def baseline_metrics(run: Path) -> dict[str, float]:
    """The job's baseline (server/baseline_phase.py): its exported layer's test and held-out accuracy;
    NaN where the job trained none (e.g. under DP without a share of the budget)."""
    path = run / "baseline.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    return {
        "baseline_accuracy": _or_nan(result.get("central_accuracy")),
        "baseline_sites_accuracy": _or_nan(result.get("sites_accuracy")),
    }


def _or_nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def privacy_spent(privacy: dict[str, Any]) -> dict[str, float]:
    """The worst (largest) epsilon any site spent in this job (a study's privacy axis), the worst
    cumulative epsilon any site's ledger holds (every job on the same data, earlier cells of a sweep
    included: what the site has spent), and its delta; inf without DP."""
    mode = privacy.get("mode", "off")
    sites = list((privacy.get("sites") or {}).values())
    if mode in ("local", "central") and sites:
        return {
            "epsilon_spent": float(max(v.get("epsilon_run", v["epsilon"]) for v in sites)),
            "epsilon_cumulative": float(max(v["epsilon"] for v in sites)),
            "delta": float(max(v["delta"] for v in sites)),
        }
    return {"epsilon_spent": math.inf, "epsilon_cumulative": math.inf, "delta": 0.0}


def _round_point(r: dict[str, Any]) -> dict[str, float]:
    cen, fed = r.get("central") or {}, r.get("federated") or {}
    return {
        "round": float(r["round"]),
        "central_accuracy": _num(cen.get("accuracy")),
        "central_macro_f1": _num(cen.get("macro_f1")),
        "sites_accuracy": _num(fed.get("accuracy")),
        "worst_site_accuracy": _num(fed.get("worst_accuracy")),
        "worst_site_macro_f1": _num(fed.get("worst_macro_f1")),
        "epsilon": privacy_spent(r.get("privacy", {}))["epsilon_spent"] if r["round"] >= 1 else 0.0,
    }


def _round_bytes(r: dict[str, Any]) -> float:
    """Weights sent to every site that trained or evaluated, plus the updates sent back."""
    down = float(r.get("bytes_down_per_site") or 0)
    sites = r.get("sites", {}).values()
    n_train = sum(1 for s in sites if s.get("train"))
    n_eval = sum(1 for s in sites if s.get("evaluate"))
    up = sum(float(s["train"].get("bytes_up", 0)) for s in sites if s.get("train"))
    return down * (n_train + n_eval) + up


def _site_accuracy(trained: list[dict[str, Any]]) -> dict[str, float]:
    """Each site's held-out accuracy in the last round it was evaluated."""
    out: dict[str, float] = {}
    for r in trained:
        for name, site in r.get("sites", {}).items():
            if "accuracy" in site.get("evaluate", {}):
                out[name] = float(site["evaluate"]["accuracy"])
    return dict(sorted(out.items()))


def _num(v: Any) -> float:
    return NAN if v is None else float(v)


def _max(values: Any) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else NAN
