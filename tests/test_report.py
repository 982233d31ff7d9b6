"""The sweep report, from a sweep output folder built here (no simulation needed).

Proves: the report writes the per-cell and summary tables (CSV and JSON, with config, privacy
and membership-inference columns; infinite epsilon as ``inf``; mean and spread across seeds),
the three PNG plots, and one self-contained HTML page (plots inlined, no external resources,
every cell's config, missing cells named); a real headless browser (Debian's chromium) renders
the page with its plots visible; a folder that is not a sweep output is refused.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from simulations.study.cellstore import PLAN, RESULT, atomic_write, cell_dir
from simulations.study.report import build_report, main
from simulations.study.results import read_csv

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="the headless-browser test needs Debian's chromium: apt-get install -y chromium"
)


def screenshot(html: Path, png: Path) -> np.ndarray:
    """Render ``html`` in headless chromium; the screenshot as an RGB array."""
    from PIL import Image

    assert CHROMIUM is not None
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={png.parent / 'chromium-profile'}",
            "--window-size=1280,2200",
            f"--screenshot={png}",
            html.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.asarray(Image.open(png).convert("RGB"))


def assert_rendered_with_plots(pixels: np.ndarray) -> None:
    """Not blank, and the plots' coloured lines are on screen (text and tables are grey)."""
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    non_white = (pixels < 240).any(axis=2).mean()
    saturated = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 100
    assert non_white > 0.02, f"screenshot looks blank ({non_white:.2%} non-white pixels)"
    assert saturated.sum() > 500, "no coloured pixels: the embedded plots did not render"


def fake_result(cell_id: str, eps: float, sites: int, seed: int) -> dict:
    acc = 0.9 if math.isinf(eps) else 0.5 + eps / 20
    return {
        "cell_id": cell_id,
        "axes": {"privacy.target_epsilon": eps, "data.num_sites": sites, "seed": seed},
        "config": {
            "seed": seed,
            "model": {"name": "resnet18", "lora_r": 0},
            "data": {"source": "digits", "num_sites": sites, "partitioner": "iid", "alpha": 0.5, "max_samples": 200},
            "privacy": {"mode": "off" if math.isinf(eps) else "local"},
            "strategy": {"rounds": 2},
            "train": {"max_steps": 2},
        },
        "run": f"cells/{cell_id}/runs/r",
        "metrics": {
            "final_accuracy": acc + seed / 100,
            "final_macro_f1": acc - 0.05,
            "best_accuracy": acc + 0.01,
            "final_worst_site_accuracy": acc - 0.1,
            "epsilon_spent": eps,
            "mia_loss_auc": 0.6 if math.isinf(eps) else 0.52,
            "mia_loss_tpr_at_1pct_fpr": 0.05,
            "mia_loss_tpr_at_0.1pct_fpr": 0.0,
            "mia_records": 50.0,
            "wall_seconds": 12.5,
            "bytes_communicated": 3e8,
        },
        "curve": [{"round": float(r), "central_accuracy": acc * r / 2} for r in range(3)],
        "site_accuracy": {f"site-{i}": acc - i / 50 for i in range(sites)},
    }


def make_sweep_folder(out: Path, missing: int = 0) -> list[str]:
    """A finished 2 x 2 x 2-seed sweep folder; the last ``missing`` cells have no result."""
    cells = []
    for eps in (2.0, math.inf):
        for sites in (2, 3):
            for seed in (0, 1):
                cells.append((f"c{len(cells):02d}", eps, sites, seed))
    plan = {
        "name": "fake",
        "source": "fake.yaml",
        "command": "python -m simulations.study.sweep fake.yaml",
        "grid": {"privacy.target_epsilon": [2.0, "inf"], "data.num_sites": [2, 3], "seed": [0, 1]},
        "fixed": {},
        "privacy_axis": "privacy.target_epsilon",
        "settings": {"audit": {"site": 0}},
        "cells": [
            {"id": c, "axes": {"privacy.target_epsilon": e, "data.num_sites": s, "seed": d}} for c, e, s, d in cells
        ],
    }
    out.mkdir(parents=True)
    atomic_write(out / PLAN, json.dumps(plan))
    for cell_id, eps, sites, seed in cells[: len(cells) - missing]:
        folder = cell_dir(out, cell_id)
        folder.mkdir(parents=True)
        atomic_write(folder / RESULT, json.dumps(fake_result(cell_id, eps, sites, seed)))
    return [c[0] for c in cells]


@pytest.mark.unit
def test_report_writes_tables_plots_and_self_contained_html(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    ids = make_sweep_folder(out, missing=1)
    html = build_report(out)

    rows = read_csv(out / "results.csv")
    assert len(rows) == 7 and rows[0]["cell_id"] == ids[0]
    assert {"privacy.target_epsilon", "data.num_sites", "seed", "final_accuracy", "epsilon_spent"} <= set(rows[0])
    assert {"mia_loss_auc", "mia_loss_tpr_at_1pct_fpr", "mia_loss_tpr_at_0.1pct_fpr"} <= set(rows[0])
    assert [r["privacy.target_epsilon"] for r in rows[:4]] == ["2.0"] * 4 and rows[4]["epsilon_spent"] == "inf"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 4 and summary[0]["seeds"] == 2
    assert summary[0]["final_accuracy_mean"] == pytest.approx(0.605)  # seeds 0 and 1: 0.60, 0.61
    assert summary[0]["final_accuracy_std"] == pytest.approx(np.std([0.60, 0.61], ddof=1))
    assert summary[-1]["seeds"] == 1 and summary[-1]["final_accuracy_std"] is None  # one seed: no spread
    assert summary[-1]["privacy.target_epsilon"] == "inf"

    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["accuracy_by_round.png", "privacy_utility.png", "site_spread.png"]
    assert all(1_000 < (out / "plots" / p).stat().st_size < 150_000 for p in pngs)

    text = html.read_text()
    assert text.count("src='data:image/png;base64,") == 3
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
    assert "MIA AUC (loss)" in text and "TPR@0.1% FPR" in text
    assert all(f"<code>{i}</code>" in text for i in ids[:-1])  # every finished cell's config
    assert f"missing: {ids[-1]}" in text


@pytest.mark.system
@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    make_sweep_folder(out)
    pixels = screenshot(build_report(out), tmp_path / "shot.png")
    assert_rendered_with_plots(pixels)


@pytest.mark.system
@needs_chromium
def test_blank_page_fails_the_render_check(tmp_path: Path) -> None:
    """The render check can fail: a page without plots is caught."""
    page = tmp_path / "empty.html"
    page.write_text("<html><body><p>nothing here</p></body></html>")
    with pytest.raises(AssertionError):
        assert_rendered_with_plots(screenshot(page, tmp_path / "shot.png"))


@pytest.mark.unit
def test_report_refuses_a_folder_that_is_not_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "not a sweep output folder" in capsys.readouterr().err
