"""docs/battery.md is the current table of every battery case (tests/battery_table.py)."""

from __future__ import annotations

import pytest

from tests import battery_table
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_the_documented_table_lists_every_case_of_every_entry_point() -> None:
    doc = REPO / "docs" / "battery.md"
    assert doc.read_text() == battery_table.render(), "regenerate: python -m tests.battery_table > docs/battery.md"


def test_every_battery_module_is_in_the_table_with_its_cases() -> None:
    """The table is built from the modules, not typed: a module with a case the table lacks fails."""
    rendered = battery_table.render()
    for name, module in battery_table.modules():
        import importlib

        cases = importlib.import_module(module).CASES
        assert f"## {name}" in rendered and all(f"| {c.id} |" in rendered for c in cases)
