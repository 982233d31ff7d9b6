"""A sweep's report: tables, plots and one self-contained HTML page, from its output folder.

    python -m simulations.study.report runs/sweeps/<name>

Reads the sweep's plan (``sweep.json``) and every finished cell's ``result.json``; writes
``results.csv/.json`` (one row per cell), ``summary.csv/.json/.md`` (mean and spread over seeds),
``plots/*.png`` and ``report.html`` (plots embedded, tables, each cell's config). Cells still
missing are listed in the report, so a partial sweep can be looked at while it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.errors import ConfideError
from simulations.study.cellstore import PLAN
from simulations.study.html_report import markdown_summary, render
from simulations.study.plots import make_plots
from simulations.study.results import cell_rows, load_study, summary_rows, write_table


def build_report(out: Path) -> Path:
    plan_path = out / PLAN
    if not plan_path.is_file():
        raise ConfideError(f"{out} is not a sweep output folder (no {PLAN})")
    study = load_study(out, json.loads(plan_path.read_text()))
    rows = cell_rows(study)
    summary = summary_rows(study, rows)
    write_table(rows, out / "results")
    write_table(summary, out / "summary")
    (out / "summary.md").write_text(markdown_summary(study, summary))
    plots = make_plots(study, out / "plots")
    html = out / "report.html"
    html.write_text(render(study, rows, summary, plots))
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the sweep's output folder")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.out)
    except ConfideError as exc:
        print(f"confide-report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
