"""Scripts in tools/ are not run in CI (they need time or a GPU), but they must at least compile."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

TOOLS = sorted((Path(__file__).resolve().parents[1] / "tools").glob("*.py"))


@pytest.mark.parametrize("script", TOOLS, ids=[t.name for t in TOOLS])
def test_tool_compiles(script):
    py_compile.compile(str(script), doraise=True)
