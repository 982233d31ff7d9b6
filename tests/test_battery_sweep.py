"""``confide sweep`` (simulations/study/sweep.py) refuses a bad sweep file or argument in one line
before any cell runs (the contract in tests/one_line.py): the file itself (missing, a folder,
empty, comment-only, not a mapping, not UTF-8, not YAML, a repeated key), its top keys (unknown,
``grid``/``set``/``audit`` not mappings, a grid axis not a non-empty list, an unknown config key, a
value out of range in some cell, an epsilon that is neither positive nor inf), its ``base`` (missing,
a folder, not a file or mapping, itself invalid), the study settings (``audit.*``,
``cpus_per_site``, ``deterministic_sites``), the command line (unknown flag, ``--out`` naming a
file, ``--parallel`` below 1, ``--set``/``--grid`` that do not parse or name no axis) and a cell
that would set DP keys while ``privacy.mode`` is off. No cell may start: ``run_cell`` fails the test
if called, and the output folder is never created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.study import sweep as sweep_mod
from tests.one_line import Case, directory, params, refused

pytestmark = pytest.mark.unit

BASE = "base: {data: {num_sites: 2, max_samples: 100}, strategy: {rounds: 1, min_sites: 2}}\n"
GRID = "grid: {seed: [0, 1]}\n"
AUDIT = "audit: {max_records: 20, reference_models: 0}\n"
OK = "name: t\n" + BASE + GRID + AUDIT  # a valid tiny sweep: each case changes one thing


def with_line(line: str, drop: str = "") -> str:
    """The valid sweep with the line starting ``drop`` removed and ``line`` added."""
    kept = [x for x in OK.splitlines(keepends=True) if not (drop and x.startswith(drop))]
    return "".join(kept) + line + "\n"


BASE_FILE = with_line("base: b.yaml", drop="base:")  # the valid sweep reading its base from b.yaml


ARGS = ("s.yaml", "--out", "{tmp}/out", "--no-report")


def sweep(text: str | bytes) -> dict[str, object]:
    return {"s.yaml": text}


# fmt: off
CASES = [
    # the command line
    Case("no-argument", (), ("required", "sweep")),
    Case("unknown-flag", (*ARGS, "--cells", "2"), ("--cells",), sweep(OK)),
    Case("parallel-zero", (*ARGS, "--parallel", "0"), ("--parallel", ">= 1", "0"), sweep(OK)),
    Case("parallel-not-a-number", (*ARGS, "--parallel", "two"), ("--parallel", "two"), sweep(OK)),
    Case("out-is-a-file", ("s.yaml", "--out", "o.txt", "--no-report"), ("--out", "o.txt", "is a file"),
         {**sweep(OK), "o.txt": "x"}),
    Case("set-without-equals", (*ARGS, "--set", "train.lr"), ("--set", "key=value", "train.lr"), sweep(OK)),
    Case("set-unknown-key", (*ARGS, "--set", "train.lrr=0.1"), ("every cell", "train.lrr"), sweep(OK)),
    Case("grid-flag-not-an-axis", (*ARGS, "--grid", "data.alpha=[1,2]"), ("data.alpha", "not a grid axis", "seed"),
         sweep(OK)),
    # the file itself
    Case("file-missing", ARGS, ("sweep file not found", "s.yaml")),
    Case("file-is-a-folder", ARGS, ("sweep file", "s.yaml", "directory"), {"s.yaml": directory}),
    Case("file-empty", ARGS, ("sweep file", "s.yaml", "empty"), sweep("")),
    Case("file-comments-only", ARGS, ("sweep file", "s.yaml", "empty"), sweep("# grid: {seed: [0]}\n")),
    Case("file-a-list", ARGS, ("sweep file", "s.yaml", "mapping", "list"), sweep("- seed: [0, 1]\n")),
    Case("file-not-utf8", ARGS, ("sweep file", "s.yaml", "UTF-8"), sweep(OK.encode() + b"# caf\xe9\n")),
    Case("file-not-yaml", ARGS, ("sweep file", "s.yaml", "not valid YAML", "line"), sweep(OK + "grid: [seed\n")),
    Case("file-duplicate-key", ARGS, ("'grid' appears twice", "s.yaml"), sweep(OK + "grid: {seed: [2]}\n")),
    # top keys
    Case("unknown-top-key", ARGS, ("unknown sweep key 'grids'", "known keys"), sweep(with_line("grids: {}"))),
    Case("name-a-path", ARGS, ("sweep key 'name'", "../x"), sweep(with_line("name: ../x", drop="name:"))),
    Case("grid-a-list", ARGS, ("sweep key 'grid'", "mapping"), sweep(with_line("grid: [seed]", drop="grid:"))),
    Case("grid-axis-a-number", ARGS, ("grid key 'seed'", "non-empty list", "0"),
         sweep(with_line("grid: {seed: 0}", drop="grid:"))),
    Case("grid-axis-empty", ARGS, ("grid key 'seed'", "non-empty list"),
         sweep(with_line("grid: {seed: []}", drop="grid:"))),
    Case("grid-unknown-config-key", ARGS, ("unknown config key 'train.lrr'", "grid"),
         sweep(with_line("grid: {train.lrr: [0.1]}", drop="grid:"))),
    Case("set-a-list", ARGS, ("sweep key 'set'", "mapping"), sweep(with_line("set: [train.lr]"))),
    Case("set-unknown-config-key", ARGS, ("every cell", "train.lrr"), sweep(with_line("set: {train.lrr: 0.1}"))),
    Case("set-clashes-with-grid", ARGS, ("'seed'", "grid axis"), sweep(with_line("set: {seed: 3}"))),
    Case("grid-num-sites-zero", ARGS, ("data.num_sites", "data.num_sites=0"),
         sweep(with_line("grid: {data.num_sites: [0, 2]}", drop="grid:"))),
    Case("epsilon-zero", ARGS, ("privacy.target_epsilon", "positive number or inf", "0"),
         sweep(with_line("grid: {privacy.target_epsilon: [0, 8]}", drop="grid:"))),
    Case("epsilon-negative", ARGS, ("privacy.target_epsilon", "positive number or inf", "-1"),
         sweep(with_line("grid: {privacy.target_epsilon: [-1]}", drop="grid:"))),
    Case("epsilon-a-word", ARGS, ("privacy.target_epsilon", "positive number or inf", "'eight'"),
         sweep(with_line("grid: {privacy.target_epsilon: [eight]}", drop="grid:"))),
    Case("privacy-key-with-mode-off", ARGS, ("privacy.max_grad_norm", "privacy.mode"),
         sweep(with_line("grid: {privacy.max_grad_norm: [0.5, 1.0]}", drop="grid:"))),
    Case("epsilon-with-mode-off-in-grid", ARGS, ("privacy.target_epsilon", "privacy.mode"),
         sweep(with_line("grid: {privacy.mode: ['off'], privacy.target_epsilon: [3]}", drop="grid:"))),
    # the base experiment
    Case("base-missing", ARGS, ("sweep key 'base' in s.yaml", "experiment file not found: b.yaml"), sweep(BASE_FILE)),
    Case("base-a-folder", ARGS, ("sweep key 'base' in s.yaml", "b.yaml is a directory"),
         {**sweep(BASE_FILE), "b.yaml": directory}),
    Case("base-a-number", ARGS, ("sweep key 'base'", "experiment file or a mapping", "got 3"),
         sweep(with_line("base: 3", drop="base:"))),
    Case("base-unknown-key", ARGS, ("every cell", "unknown config key 'train.lrr' in b.yaml"),
         {**sweep(BASE_FILE), "b.yaml": "train: {lrr: 0.1}\n"}),
    Case("base-not-yaml", ARGS, ("sweep key 'base' in s.yaml", "b.yaml is not valid YAML", "line 2"),
         {**sweep(BASE_FILE), "b.yaml": "train: {lr: [\n"}),
    Case("base-empty", ARGS, ("sweep key 'base' in s.yaml", "b.yaml is empty"),
         {**sweep(BASE_FILE), "b.yaml": "# nothing\n"}),
    # study settings
    Case("audit-a-number", ARGS, ("sweep key 'audit'", "mapping"), sweep(with_line("audit: 3", drop="audit:"))),
    Case("audit-unknown-key", ARGS, ("audit.records", "max_records"),
         sweep(with_line("audit: {records: 20}", drop="audit:"))),
    Case("audit-site-a-word", ARGS, ("audit.site", "integer", "'first'"),
         sweep(with_line("audit: {site: first}", drop="audit:"))),
    Case("audit-max-records-negative", ARGS, ("audit.max_records", ">= 0"),
         sweep(with_line("audit: {max_records: -5}", drop="audit:"))),
    Case("audit-reference-models-float", ARGS, ("audit.reference_models", "integer", "1.5"),
         sweep(with_line("audit: {reference_models: 1.5}", drop="audit:"))),
    Case("audit-site-beyond-sites", ARGS, ("every cell", "audit.site", "(2)", "0..1"),
         sweep(with_line("audit: {site: 2, max_records: 20}", drop="audit:"))),
    Case("cpus-per-site-zero", ARGS, ("cpus_per_site", "positive", "0"), sweep(with_line("cpus_per_site: 0"))),
    Case("cpus-per-site-negative", ARGS, ("cpus_per_site", "positive", "-1"), sweep(with_line("cpus_per_site: -1"))),
    Case("cpus-per-site-a-word", ARGS, ("cpus_per_site", "positive", "'all'"), sweep(with_line("cpus_per_site: all"))),
    Case("cpus-per-site-beyond-machine", ARGS, ("cpus_per_site", "4096", "CPUs"),
         sweep(with_line("cpus_per_site: 4096"))),
    Case("deterministic-sites-a-word", ARGS, ("deterministic_sites", "true or false", "'yes please'"),
         sweep(with_line("deterministic_sites: yes please"))),
    Case("deterministic-sites-a-number", ARGS, ("deterministic_sites", "true or false", "1"),
         sweep(with_line("deterministic_sites: 1"))),
]
# fmt: on


@pytest.fixture
def no_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any cell started (or re-audited) fails the test: every refusal comes before the first."""

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cell ran before the refusal")

    monkeypatch.setattr(sweep_mod, "run_cell", started)
    monkeypatch.setattr(sweep_mod, "reaudit_cell", started)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_is_refused_in_one_line_before_any_cell_runs(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_cell: None
) -> None:
    refused(sweep_mod.main, case, tmp_path, monkeypatch, capsys)
    assert not (tmp_path / "out").exists()


def test_the_valid_sweep_the_cases_start_from_is_accepted(tmp_path: Path) -> None:
    """Each case differs from this file by one line, so its refusal is that line's doing."""
    (tmp_path / "s.yaml").write_text(OK)
    sweep = sweep_mod.load_sweep(tmp_path / "s.yaml")
    assert [c.axes for c in sweep.cells] == [{"seed": 0}, {"seed": 1}]
