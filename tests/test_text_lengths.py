"""The model.max_length rule (common/text_lengths.py) by hand, and ``confide plan`` printing a
deployed text site's token lengths against the job's max_length (its own file, locally)."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.plan import main
from common.text_lengths import measure, suggest

pytestmark = pytest.mark.unit


def test_the_rule_is_the_95th_percentile_rounded_up_to_a_multiple_of_8() -> None:
    # 20 records of lengths 1..20: numpy's 95th percentile interpolates to 19.05 -> 24
    m = measure(list(range(1, 21)), max_length=16)
    assert (m.p50, m.p95, m.longest, m.suggested) == (10, 20, 20, 24)
    assert m.truncated == pytest.approx(4 / 20)  # 17, 18, 19, 20 are longer than 16
    assert suggest(3.0) == 16  # the floor
    assert suggest(700.0) == 512 and suggest(700.0, ceiling=256) == 256


def test_plan_prints_a_text_sites_token_lengths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    words = ["my", "card", "is", "lost", "now"]
    rows = [f'"{" ".join(words[: 1 + i % 5])} please",{i % 2}' for i in range(40)]
    (tmp_path / "site.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "job.yaml").write_text(
        "name: t\nmodel: {name: bert, max_length: 8}\ndata: {source: csv, path: site.csv, num_sites: 1}\n"
        "strategy: {rounds: 1, min_sites: 1}\nprivacy: {mode: local, target_epsilon: 8}\n"
    )
    code = main([str(tmp_path / "job.yaml"), "--data-path", str(tmp_path / "site.csv"), "--probe-batches", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith("token lengths at site:"))
    # "[CLS] w1..wk please [SEP]", common words of one token each: 4 to 8 tokens; max_length 8 cuts
    # nothing; the rule gives its floor, 16
    assert "longest 8" in line and "cuts 0.0 %" in line and "gives 16" in line, line
