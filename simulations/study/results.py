"""The sweep's tidy tables: one row per cell, and mean / spread across seeds per setting.

Config columns are dotted config keys (the grid axes first, then a few that describe the
setting); metric columns are named in ``METRICS``. Written as CSV and JSON; in both, an
infinite epsilon is ``inf`` (no DP) and a missing value is empty (CSV) or null (JSON).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.study.cellstore import cell_dir, load_result

CONTEXT = (
    "data.source",
    "model.name",
    "model.lora_r",
    "privacy.mode",
    "strategy.rounds",
    "data.num_sites",
    "data.partitioner",
    "data.alpha",
    "data.max_samples",
    "train.max_steps",
    "seed",
)
METRICS = (
    "final_accuracy",
    "final_macro_f1",
    "best_accuracy",
    "best_macro_f1",
    "final_sites_accuracy",
    "final_worst_site_accuracy",
    "final_worst_site_macro_f1",
    "best_worst_site_accuracy",
    "best_worst_site_macro_f1",
    "epsilon_spent",
    "epsilon_cumulative",
    "delta",
    "mia_loss_auc",
    "mia_loss_tpr_at_1pct_fpr",
    "mia_loss_tpr_at_0.1pct_fpr",
    "mia_calibrated_auc",
    "mia_calibrated_tpr_at_1pct_fpr",
    "mia_calibrated_tpr_at_0.1pct_fpr",
    "mia_records",
    "wall_seconds",
    "bytes_communicated",
    "site_failures",
    "baseline_accuracy",
    "baseline_sites_accuracy",
)
# Columns that legitimately differ between two runs of the same sweep.
NONDETERMINISTIC = ("wall_seconds",)


@dataclass(frozen=True)
class Study:
    plan: dict[str, Any]
    results: list[dict[str, Any]]  # cell results, in plan order, complete cells only
    missing: list[str]  # plan cell ids without a result

    @property
    def axes(self) -> list[str]:
        return list(self.plan["grid"])

    @property
    def config_columns(self) -> list[str]:
        return self.axes + [c for c in CONTEXT if c not in self.axes]

    @property
    def setting_columns(self) -> list[str]:
        """What defines a setting (a curve): every config column but seed and the privacy axis."""
        skip = {"seed", self.plan.get("privacy_axis"), "privacy.mode"}
        return [c for c in self.config_columns if c not in skip]


def load_study(out: Path, plan: dict[str, Any]) -> Study:
    results, missing = [], []
    for cell in plan["cells"]:
        result = load_result(cell_dir(out, cell["id"]), cell["id"])
        if result is None:
            missing.append(cell["id"])
        else:
            results.append(result)
    return Study(plan=plan, results=results, missing=missing)


def cell_rows(study: Study) -> list[dict[str, Any]]:
    rows = []
    for result in study.results:
        row: dict[str, Any] = {"cell_id": result["cell_id"]}
        for col in study.config_columns:
            row[col] = _axis_value(result["axes"][col]) if col in result["axes"] else _dotted(result["config"], col)
        row.update({m: result["metrics"].get(m, math.nan) for m in METRICS})
        row["mia_nonmembers"] = result.get("audit_notes", {}).get("nonmembers", "")
        rows.append(row)
    return rows


def summary_rows(study: Study, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation across seeds (empty with one seed) per setting and privacy."""
    keys = [c for c in study.config_columns if c != "seed"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(row[k], default=str) for k in keys), []).append(row)
    out = []
    for members in groups.values():
        summary = {k: members[0][k] for k in keys}
        summary["seeds"] = len(members)
        for m in METRICS:
            values = [float(r[m]) for r in members if not _missing(r[m])]
            summary[f"{m}_mean"] = statistics.fmean(values) if values else math.nan
            summary[f"{m}_std"] = (
                statistics.stdev(values) if len(values) > 1 and all(map(math.isfinite, values)) else math.nan
            )
        summary["mia_nonmembers"] = " / ".join(sorted({str(r.get("mia_nonmembers", "")) for r in members}))
        summary["cell_ids"] = " ".join(r["cell_id"] for r in members)
        out.append(summary)
    return out


def write_table(rows: list[dict[str, Any]], stem: Path) -> tuple[Path, Path]:
    """``stem``.csv and ``stem``.json."""
    columns = list(rows[0]) if rows else []
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _csv_value(r[k]) for k in columns} for r in rows)
    json_path.write_text(json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows], indent=1))
    return csv_path, json_path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _axis_value(v: Any) -> Any:
    return math.inf if v == "inf" else v


def _dotted(cfg: dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else ("inf" if v == math.inf else repr(v))
    return v


def _json_value(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else ("inf" if v == math.inf else v)
    return v
