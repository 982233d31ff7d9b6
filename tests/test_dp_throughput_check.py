"""benchmarks/dp_throughput.py --check: a result whose ratio against plain crosses a threshold in
either direction (training memory above its maximum, speed below its minimum), or that lacks a
thresholded row, fails naming model, variant and metric; a result within the thresholds passes,
and so does the committed result the repository's thresholds were set on; a malformed thresholds
file stops with one line naming the file and key; --markdown prints the result's own figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import dp_throughput
from benchmarks.dp_throughput_check import REPO, THRESHOLDS, load_rows, load_thresholds, markdown, violations

pytestmark = pytest.mark.unit


def row(model: str, variant: str, **ratios: float) -> dict:
    base = {"samples_per_s": 10.0, "samples_per_cpu_s": 10.0, "peak_rss_mib": 1000.0, "train_mem_mib": 500.0}
    return {"model": model, "variant": variant, **base, **ratios}


def write(tmp_path: Path, rows: list[dict], limits: dict) -> tuple[Path, Path]:
    result, thresholds = tmp_path / "result.json", tmp_path / "thresholds.json"
    result.write_text(json.dumps({"rows": rows}))
    thresholds.write_text(json.dumps({"thresholds": limits}))
    return result, thresholds


def run_check(monkeypatch: pytest.MonkeyPatch, result: Path, thresholds: Path) -> None:
    argv = ["dp_throughput", "--check", "--result", str(result), "--thresholds", str(thresholds)]
    monkeypatch.setattr("sys.argv", argv)
    dp_throughput.main()


LIMITS = {"minilm:bookkeeping": {"train_mem_vs_plain_max": 1.2, "cpu_speed_vs_plain_min": 0.8}}


def test_memory_over_its_maximum_fails_naming_it(tmp_path, monkeypatch, capsys) -> None:
    rows = [row("minilm", "plain"), row("minilm", "bookkeeping", train_mem_vs_plain=1.25, cpu_speed_vs_plain=0.9)]
    result, thresholds = write(tmp_path, rows, LIMITS)
    with pytest.raises(SystemExit, match="1 threshold"):
        run_check(monkeypatch, result, thresholds)
    assert "minilm:bookkeeping: train_mem_vs_plain = 1.250 > max 1.2" in capsys.readouterr().out


def test_speed_under_its_minimum_fails_and_both_are_listed(tmp_path, monkeypatch, capsys) -> None:
    rows = [row("minilm", "bookkeeping", train_mem_vs_plain=1.3, cpu_speed_vs_plain=0.79)]
    result, thresholds = write(tmp_path, rows, LIMITS)
    with pytest.raises(SystemExit, match="2 threshold"):
        run_check(monkeypatch, result, thresholds)
    out = capsys.readouterr().out
    assert "cpu_speed_vs_plain = 0.790 < min 0.8" in out and "train_mem_vs_plain = 1.300 > max 1.2" in out


def test_within_thresholds_passes_including_at_the_limit(tmp_path, monkeypatch, capsys) -> None:
    rows = [row("minilm", "bookkeeping", train_mem_vs_plain=1.2, cpu_speed_vs_plain=0.8)]
    result, thresholds = write(tmp_path, rows, LIMITS)
    run_check(monkeypatch, result, thresholds)
    assert "check passed" in capsys.readouterr().out


def test_a_missing_row_or_ratio_fails(tmp_path: Path) -> None:
    limits, _ = load_thresholds(write(tmp_path, [], LIMITS)[1])
    assert violations([row("minilm", "plain")], limits) == [
        "minilm:bookkeeping: no row in the result (run it with its plain baseline)"
    ]
    missing = violations([row("minilm", "bookkeeping", train_mem_vs_plain=1.0)], limits)
    assert missing == ["minilm:bookkeeping: cpu_speed_vs_plain missing (is the plain row in the same run?)"]


def test_committed_result_passes_the_repository_thresholds() -> None:
    limits, reference = load_thresholds(THRESHOLDS)
    assert reference, "the thresholds file names the run they were set on (docs/benchmarks.md cites it: tracked)"
    assert violations(load_rows(REPO / reference), limits) == []
    assert {("minilm", "bookkeeping"), ("resnet18", "bookkeeping")} <= set(limits)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"thresholds": {"minilm": {"speed_vs_plain_min": 1}}}', "key 'minilm' must be 'model:variant'"),
        ('{"thresholds": {"minilm:bookkeeping": {"speed_min": 1}}}', "minilm:bookkeeping.speed_min is not one of"),
        ('{"thresholds": {"minilm:bookkeeping": {"peak_vs_plain_max": "1"}}}', "must be a finite number"),
        ('{"limits": {}}', "key 'thresholds' must be a non-empty object"),
        ("{", "not JSON"),
    ],
)
def test_malformed_thresholds_stop_with_one_line(tmp_path, monkeypatch, content: str, message: str) -> None:
    result, thresholds = write(tmp_path, [row("minilm", "bookkeeping")], {})
    thresholds.write_text(content)
    with pytest.raises(SystemExit) as stop:
        run_check(monkeypatch, result, thresholds)
    text = str(stop.value.code)
    assert message in text and str(thresholds) in text and "\n" not in text


def test_markdown_prints_the_results_own_figures(tmp_path, monkeypatch, capsys) -> None:
    rows = [
        row("resnet18", "plain", speed_vs_plain=1.0) | {"samples_per_s_all": [9.5, 10.0, 10.5]},
        row("resnet18", "bookkeeping", speed_vs_plain=0.8123, train_mem_vs_plain=1.234)
        | {"samples_per_s": 8.1, "samples_per_s_all": [8.0, 8.1, 8.3], "train_mem_mib": 617.0},
    ]
    result, _ = write(tmp_path, rows, LIMITS)
    monkeypatch.setattr("sys.argv", ["dp_throughput", "--markdown", "--result", str(result)])
    dp_throughput.main()
    out = capsys.readouterr().out.splitlines()
    assert "| CPU | ResNet-18 | DP, **book-keeping** (default) | 8.1 (8.0, 8.1, 8.3) | 0.81 |" in out[3]
    assert "| 617 | 1.23 | – |" in out[3]  # an older result without batch sizes
    assert out[-1].startswith("| GPU |") and "not measured" in out[-1]


def test_summary_keeps_the_largest_poisson_batch_of_any_repeat() -> None:
    """Peak memory follows a run's largest batch: the summary row keeps the largest over repeats
    (here 41 from the second repeat's [30, 41]), and the docs table shows it."""
    runs = [
        {"model": "minilm", "variant": v, "samples_per_s": 3.0, "samples_per_cpu_s": 9.0, "peak_rss_mib": 2000.0,
         "train_mem_mib": 1000.0, "batch_sizes": sizes}
        for v, sizes in [("plain", [32, 32]), ("bookkeeping", [28, 35]), ("bookkeeping", [30, 41])]
    ]  # fmt: skip
    rows = dp_throughput.summarize(runs)
    assert [r["largest_batch"] for r in rows] == [32, 41]
    assert markdown(rows).splitlines()[3].endswith("| 1.00 | 41 |")
