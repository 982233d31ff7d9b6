"""Every command the documentation shows still exists: each ``python -m <module>`` resolves and
answers ``--help`` with every ``--option`` the docs give it, each ``confide <subcommand>`` and
``confide-*`` script is declared, and each repository path the docs name is a file. This is what
proves a layout change (modules moved into ``simulations/study/``) left the docs runnable."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from simulations.cli import SUBCOMMANDS
from tests.conftest import REPO

DOCS = [REPO / "README.md", REPO / "docker" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MODULE = re.compile(r"python -m ([A-Za-z_][\w.]*)((?:[^`\n\\]|\\(?!\n))*)")
SUBCOMMAND = re.compile(r"(?<![\w/.-])confide ([a-z][a-z-]*)")
SCRIPT = re.compile(r"(?<![\w/.-])(confide-(?:score|sweep|report|site-audit|[a-z]+))\b")
TOP = "scripts|docker|simulations|benchmarks|common|server|client|docs"
PATH = re.compile(rf"(?<![\w/.<$-])((?:{TOP})/[\w./-]*\w)(?![\w/.<*-])")  # a file or folder, whole
IMAGES = {"confide-base", "confide-coordinator", "confide-site", "confide-study"}  # container image names


def code_of(path: Path) -> str:
    """The text inside fenced blocks and inline backticks: where the docs give commands."""
    text = path.read_text(encoding="utf-8")
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(fenced + inline)


def commands() -> dict[str, set[str]]:
    """module -> the --options the docs pass it."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for module, rest in MODULE.findall(code_of(doc)):
            found.setdefault(module, set()).update(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest))
    return found


def help_text(module_name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's --help, and each of its subcommands' --help."""
    module = importlib.import_module(module_name)
    takes_argv = bool(inspect.signature(module.main).parameters)

    def ask(argv: list[str]) -> str:
        out = io.StringIO()
        monkeypatch.setattr(sys, "argv", [module_name, *argv])
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
            module.main(argv) if takes_argv else module.main()
        assert stop.value.code == 0, f"{module_name} {argv}"
        return out.getvalue()

    top = ask(["--help"])
    return "\n".join([top, *(ask([sub, "--help"]) for sub in subcommands_of(top))])


def subcommands_of(help_text: str) -> list[str]:
    """A parser with subcommands shows them as {a,b} in its usage line; each has its own options."""
    usage = help_text.split("\n\n")[0]
    return [sub for group in re.findall(r"\{([\w,-]+)\}", usage) for sub in group.split(",")]


DOC_COMMANDS = commands()


@pytest.mark.unit
def test_the_docs_show_the_entry_points_users_need() -> None:
    """The parse itself must find commands, or the tests below prove nothing."""
    for needed in ("simulations.local", "simulations.study.sweep", "simulations.study.report", "client.audit_log"):
        assert needed in DOC_COMMANDS, needed
    assert "--set" in DOC_COMMANDS["simulations.local"]


@pytest.mark.unit
@pytest.mark.parametrize("module_name", sorted(m for m in DOC_COMMANDS if m != "pytest"))
def test_each_documented_module_answers_help_with_the_documented_options(
    module_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert importlib.util.find_spec(module_name) is not None, f"docs run python -m {module_name}: no such module"
    text = help_text(module_name, monkeypatch)
    missing = sorted(opt for opt in DOC_COMMANDS[module_name] if opt not in text)
    assert not missing, f"python -m {module_name}: the docs pass {missing}, which --help does not list"


@pytest.mark.unit
def test_each_documented_confide_subcommand_and_script_exists() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["confide"] == "simulations.cli:main"
    for doc in DOCS:
        code = code_of(doc)
        for sub in SUBCOMMAND.findall(code):
            assert sub in SUBCOMMANDS, f"{doc.name}: `confide {sub}` is not a subcommand"
        for script in set(SCRIPT.findall(code)) - IMAGES:
            assert script in scripts, f"{doc.name}: `{script}` is not a declared console script"


def shipped() -> set[str] | None:
    """Every file and folder a fresh clone holds (git's index), or None outside a git checkout.
    Checking the disk instead would pass on a file that exists here but is ignored by git."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    files = set(out.stdout.splitlines())
    return files | {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}


@pytest.mark.system
def test_each_repository_path_the_docs_name_exists() -> None:
    named = {(doc.name, p) for doc in DOCS for p in PATH.findall(code_of(doc)) if "*" not in p}
    assert len(named) > 20  # the parse finds the many paths the docs give
    tracked = shipped()
    exists = (lambda p: p.rstrip("/") in tracked) if tracked is not None else (lambda p: (REPO / p).exists())
    missing = sorted(f"{doc}: {p}" for doc, p in named if not exists(p))
    assert not missing, missing


ISSUE_NUMBER = re.compile(r"\bissues? ?#?\d{1,3}\b", re.IGNORECASE)


@pytest.mark.unit
def test_no_issue_numbers_in_code_tests_or_docs() -> None:
    """Code, tests, configs and docs say why, not which ticket: history belongs in git. (Upstream
    bug references such as "flower #599" or a URL are not Confide's issue numbers.)"""
    folders = ("common", "client", "server", "simulations", "tests", "benchmarks", "docs", "docker", "scripts", ".ci")
    files = [REPO / "README.md", REPO / "pyproject.toml"] + [
        p for f in folders for p in sorted((REPO / f).rglob("*")) if p.suffix in (".py", ".md", ".yaml", ".yml", ".sh")
    ]
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if ISSUE_NUMBER.search(line) and "github.com" not in line
    ]
    assert not found, "\n".join(found[:20])
