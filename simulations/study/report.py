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
import os
import sys
from pathlib import Path
from typing import Any

from common import cli
from common.errors import ConfideError
from simulations.study.cellstore import PLAN, RESULT, cell_dir
from simulations.study.html_report import markdown_summary, render
from simulations.study.plots import make_plots
from simulations.study.results import Study, cell_rows, load_study, summary_rows, write_table

# What the report reads from the plan and from each finished cell's result, with their JSON types.
PLAN_FIELDS: dict[str, type] = {
    "name": str,
    "source": str,
    "grid": dict,
    "fixed": dict,
    "settings": dict,
    "cells": list,
}
RESULT_FIELDS: dict[str, type] = {"axes": dict, "config": dict, "metrics": dict}


def read_plan(out: Path) -> dict[str, Any]:
    """The sweep's plan (``sweep.json``), checked to hold what the report reads."""
    cli.existing_folder(out, "sweep output folder")
    plan_path = out / PLAN
    if plan_path.is_dir():
        raise ConfideError(f"{plan_path} is a folder; a sweep's plan file is expected")
    if not plan_path.is_file():
        raise ConfideError(f"{out} is not a sweep output folder (no {PLAN})")
    try:
        text = plan_path.read_text(encoding="utf-8")
        plan = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        what = "is empty" if not plan_path.stat().st_size else f"is not JSON ({exc})"
        raise ConfideError(f"{plan_path} {what}; it is written by 'confide sweep'") from None
    if not isinstance(plan, dict):
        raise ConfideError(f"{plan_path} holds a JSON {type(plan).__name__}, not a sweep plan (an object)")
    for key, kind in PLAN_FIELDS.items():
        if not isinstance(plan.get(key), kind):
            found = "missing" if key not in plan else f"a {type(plan[key]).__name__}"
            raise ConfideError(f"{plan_path}: '{key}' is {found}, not {_kind(kind)}")
    for i, cell in enumerate(plan["cells"]):
        if not isinstance(cell, dict) or not isinstance(cell.get("id"), str) or not cell["id"]:
            raise ConfideError(f"{plan_path}: cell {i} has no 'id' (a non-empty string)")
    return plan


def check_results(out: Path, study: Study) -> None:
    for result in study.results:
        path = cell_dir(out, result["cell_id"]) / RESULT
        for key, kind in RESULT_FIELDS.items():
            if not isinstance(result.get(key), kind):
                found = "missing" if key not in result else f"a {type(result[key]).__name__}"
                raise ConfideError(f"{path}: '{key}' is {found}, not {_kind(kind)}; rerun that cell")


def _kind(kind: type) -> str:
    return {str: "a string", dict: "an object", list: "a list"}[kind]


def build_report(out: Path) -> Path:
    plan = read_plan(out)
    study = load_study(out, plan)
    check_results(out, study)
    if not os.access(out, os.W_OK):
        raise ConfideError(f"sweep output folder {out} is not writable; the report is written into it")
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
    parser = cli.Parser(
        prog=cli.prog("python -m simulations.study.report"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="the sweep's output folder")
    try:
        args = parser.parse_args(argv)
        path = build_report(args.out)
    except ConfideError as exc:
        return cli.refuse(exc)
    except OSError as exc:  # the folder was checked; a write failing now (disk full, a folder in the way) failed
        print(f"confide: could not write the report: {exc.strerror or exc} ({exc.filename})", file=sys.stderr)
        return cli.FAILED
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
