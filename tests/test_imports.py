"""The import direction the design card sets, read from the source with ``ast`` (nothing imported):
``common/`` never imports flwr, only ``common/privacy/`` imports Opacus, its mechanisms never import its
governance, shipped code (common,
client, server) never imports the study tooling or anything above it, and the project's modules
have no import cycle at module level (imports inside functions are deliberate, lazy ones)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

PACKAGES = ("common", "client", "server", "simulations", "benchmarks")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Every module name an import statement in the file names (``from a.b import c``: a.b and a.b.c)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # what runs at import time: top-level try/if blocks too, not `if TYPE_CHECKING:`
        defs = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        nodes = [n for stmt in tree.body if not isinstance(stmt, defs) for n in ast.walk(stmt)]
        nodes = [n for n in nodes if not _in_type_checking(tree, n)]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _in_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            if any(n is target for n in ast.walk(stmt)):
                return True
    return False


def offenders(prefix: str, forbidden: tuple[str, ...], *, allowed: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for name, path in SOURCES.items():
        if not (name == prefix or name.startswith(prefix + ".")) or name.startswith(allowed):
            continue
        found = imports(path, top_level_only=False)
        hits = sorted(i for i in found if any(i == f or i.startswith(f + ".") for f in forbidden))
        bad += [f"{name} imports {hit}" for hit in hits]
    return bad


def test_the_scan_sees_the_project_and_its_imports() -> None:
    """If the parse saw nothing, every rule below would pass vacuously."""
    assert {"common.train", "client.app", "server.app", "simulations.local", "simulations.study.sweep"} <= set(SOURCES)
    assert "flwr.clientapp" in imports(SOURCES["client.app"], top_level_only=False)
    assert "opacus" in {
        i.split(".")[0] for i in imports(SOURCES["common.privacy.governance.dpsgd"], top_level_only=False)
    }


def test_common_never_imports_flwr() -> None:
    """flwr_datasets (the partitioners) is a separate package that needs no Flower runtime; it is allowed."""
    assert offenders("common", ("flwr",)) == []


def test_only_common_privacy_imports_opacus() -> None:
    for top in PACKAGES:
        allowed = ("common.privacy",) if top == "common" else ()
        assert offenders(top, ("opacus",), allowed=allowed) == []


def test_privacy_mechanism_knows_nothing_of_governance() -> None:
    """common/privacy/mechanism (the DP mathematics) never imports common/privacy/governance (policies,
    ledgers, releases, statements), lazily or not; governance uses the mechanisms."""
    assert offenders("common.privacy.mechanism", ("common.privacy.governance",)) == []
    governance = [
        imports(p, top_level_only=False) for n, p in SOURCES.items() if n.startswith("common.privacy.governance")
    ]
    assert any(i.startswith("common.privacy.mechanism") for found in governance for i in found)


@pytest.mark.parametrize("package", ["common", "client", "server"])
def test_shipped_code_never_imports_the_tooling_above_it(package: str) -> None:
    """What a site runs (the bundle: common, client, server) must not need simulations/, benchmarks/ or
    tests/; common/ must not need the Flower adapters either."""
    above = ("simulations", "benchmarks", "tests") + (("client", "server") if package == "common" else ())
    assert offenders(package, above) == []


def test_there_is_no_import_cycle_at_module_level() -> None:
    graph = {
        name: {dep for dep in imports(path, top_level_only=True) if dep in SOURCES and dep != name}
        for name, path in SOURCES.items()
    }
    cycles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def test_shipped_and_runner_code_has_no_import_cycle_even_through_lazy_imports() -> None:
    """Imports inside functions included: a lazy import hides a cycle from Python, not from a reader."""
    names = {n: p for n, p in SOURCES.items() if n.split(".")[0] in ("common", "client", "server", "simulations")}
    graph = {n: {d for d in imports(p, top_level_only=False) if d in names and d != n} for n, p in names.items()}
    assert [sorted(c) for c in strongly_connected(graph) if len(c) > 1] == []


# What Flower does not promise: only server/flower_internals.py may name it (tests/flower_contract pins it).
FLOWER_INTERNALS = {"momentum_vector", "m_t", "v_t", "_getframe", "_add_noise_to_aggregated_arrays", "run_simulation"}


def identifiers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.name.rsplit(".", 1)[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import)
              for a in n.names}  # fmt: skip
    names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return names


def test_only_the_adapter_touches_flowers_internals() -> None:
    offenders = {
        name: sorted(identifiers(path) & FLOWER_INTERNALS)
        for name, path in SOURCES.items()
        if name != "server.flower_internals" and identifiers(path) & FLOWER_INTERNALS
    }
    assert offenders == {}
    assert identifiers(SOURCES["server.flower_internals"]) & FLOWER_INTERNALS  # the scan sees them


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def test_the_cycle_check_can_fail() -> None:
    assert [sorted(c) for c in strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) if len(c) > 1] == [
        ["a", "b", "c"]
    ]
