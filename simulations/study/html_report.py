"""Render a sweep as one self-contained HTML page (plots inlined as data URIs, no external files)."""

from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path
from typing import Any

import yaml

from simulations.study.results import Study

SUMMARY_METRICS = (
    ("final_accuracy", "test acc"),
    ("baseline_accuracy", "baseline test acc"),
    ("best_accuracy", "best test acc"),
    ("final_macro_f1", "test F1"),
    ("final_worst_site_accuracy", "worst-site acc"),
    ("epsilon_spent", "ε spent"),
    ("mia_loss_auc", "MIA AUC (loss)"),
    ("mia_loss_tpr_at_1pct_fpr", "TPR@1% FPR"),
    ("mia_loss_tpr_at_0.1pct_fpr", "TPR@0.1% FPR"),
    ("mia_calibrated_auc", "MIA AUC (calibrated)"),
    ("mia_calibrated_tpr_at_1pct_fpr", "cal. TPR@1%"),
    ("mia_calibrated_tpr_at_0.1pct_fpr", "cal. TPR@0.1%"),
    ("mia_records", "MIA records"),
    ("wall_seconds", "wall s"),
    ("bytes_communicated", "bytes"),
)
STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin:8px 0 24px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f0f0f0} td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
pre{background:#f7f7f7;padding:8px;font-size:11px;overflow-x:auto}
.note{color:#555;font-size:13px}
"""
NOTES = [
    "ε is the largest record-level ε any site spent over the whole training (DP-SGD at every site, "
    "δ = 1/n of the site unless set); ∞ means no differential privacy.",
    "Test metrics are the final global model's on the server's test split; worst site is the lowest "
    "held-out accuracy among the sites. Mean ± sample standard deviation over seeds.",
    "Membership inference on the final global model: members are one site's training records, "
    "non-members held-out records with the same label mix, equal counts (MIA records), from the "
    "training split when it has enough, else the test split (column mia_nonmembers). Loss: the "
    "loss-threshold attack. Calibrated: offline reference-model attack (target confidence minus "
    "reference models' on the same record). AUC 0.5 is chance; a TPR at an FPR below 1/(MIA records) "
    "cannot be resolved and reads as the TPR at FPR 0.",
    "Bytes: model weights sent to the sites (training and evaluation) and updates sent back, all rounds.",
]


def render(study: Study, rows: list[dict[str, Any]], summary: list[dict[str, Any]], plots: list[Path]) -> str:
    plan = study.plan
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Sweep {_e(plan['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Privacy-utility study: {_e(plan['name'])}</h1>",
        f"<p class='note'>{len(study.results)} of {len(plan['cells'])} cells done"
        + (f"; missing: {_e(', '.join(study.missing))}" if study.missing else "")
        + f". Report written {time.strftime('%Y-%m-%d %H:%M')}.</p>",
        f"<p>Command: <code>{_e(plan.get('command') or '-')}</code><br>",
        f"Sweep file: <code>{_e(plan['source'])}</code></p>",
        "<pre>" + _e(yaml.safe_dump({"grid": plan["grid"], "set": plan["fixed"], **plan["settings"]})) + "</pre>",
        "<ul class='note'>" + "".join(f"<li>{_e(n)}</li>" for n in NOTES) + "</ul>",
        "<h2>Plots</h2>",
        *[f"<h3>{_e(p.stem.replace('_', ' '))}</h3><img alt='{_e(p.stem)}' src='{_data_uri(p)}'>" for p in plots],
        "<h2>Summary (mean ± std over seeds)</h2>",
        _summary_table(study, summary) if summary else "<p>No cell has finished yet.</p>",
        "<h2>All cells</h2>",
        _table(list(rows[0]) if rows else [], rows),
        "<h2>Cell configurations</h2>",
        *[_cell_details(r) for r in study.results],
        "</body></html>",
    ]
    return "\n".join(parts)


def _summary_table(study: Study, summary: list[dict[str, Any]]) -> str:
    config = [c for c in study.axes if c != "seed"]
    fixed = [c for c in study.config_columns if c not in config and c != "seed"]
    same = ", ".join(f"{c}={_fmt(summary[0][c], c)}" for c in fixed if len({str(r[c]) for r in summary}) == 1)
    head = "".join(f"<th class='l'>{_e(c)}</th>" for c in config) + "<th>seeds</th>"
    head += "".join(f"<th>{_e(label)}</th>" for _, label in SUMMARY_METRICS)
    body = []
    for row in summary:
        cells = "".join(f"<td class='l'>{_e(_fmt(row[c], c))}</td>" for c in config) + f"<td>{row['seeds']}</td>"
        for metric, _ in SUMMARY_METRICS:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            text = _fmt(mean, metric) + ("" if math.isnan(std) else f" ± {_fmt(std, metric)}")
            cells += f"<td>{_e(text)}</td>"
        body.append(f"<tr>{cells}</tr>")
    table = f"<div style='overflow-x:auto'><table><tr>{head}</tr>{''.join(body)}</table></div>"
    return (f"<p class='note'>Same in every row: {_e(same)}</p>" if same else "") + table


def markdown_summary(study: Study, summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (for docs): varying config columns and the headline metrics."""
    config = [c for c in study.axes if c != "seed"]
    head = [*config, "seeds", *(label for _, label in SUMMARY_METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        cells = [_fmt(row[c], c) for c in config] + [str(row["seeds"])]
        for metric, _ in SUMMARY_METRICS:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            cells.append(_fmt(mean, metric) + ("" if math.isnan(std) else f" ± {_fmt(std, metric)}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(r[c], c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>"


def _cell_details(result: dict[str, Any]) -> str:
    axes = ", ".join(f"{k}={v}" for k, v in result["axes"].items())
    text = yaml.safe_dump(
        {"axes": result["axes"], "run": result["run"], "experiment": result["config"]}, sort_keys=False
    )
    return f"<details><summary><code>{_e(result['cell_id'])}</code> {_e(axes)}</summary><pre>{_e(text)}</pre></details>"


def _fmt(v: Any, column: str = "") -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "∞"
        if _is_config(column):
            return f"{v:g}"
        if column.startswith("bytes"):
            return f"{v / 1e6:,.1f} MB"
        if column.startswith(("wall", "mia_records")):
            return f"{v:,.0f}"
        return f"{v:.4g}" if abs(v) >= 10 else f"{v:.4f}"
    return str(v)


def _is_config(column: str) -> bool:
    return column == "seed" or ("." in column and not column.startswith("mia_"))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
