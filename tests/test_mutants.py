"""tools/mutants.py stays in step with the code it mutates.

Each mutant names a snippet of source that must occur exactly once; when the code
changes under it, this fails (cheaply, without running any mutant) and says which
entry to update, instead of ``make mutants`` finding out much later.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "mutants.py"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("poolkeeper_mutants", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutant_applies_to_exactly_one_place() -> None:
    tool = load_tool()
    tool.check_all()
    for mutant in tool.MUTANTS:
        assert mutant.original != mutant.mutated, mutant.id
        assert mutant.tests, mutant.id


def test_a_snippet_that_moved_stops_the_run_naming_the_entry(tmp_path: Path) -> None:
    tool = load_tool()
    mutant = tool.MUTANTS[0]
    (tmp_path / mutant.path).parent.mkdir(parents=True)
    (tmp_path / mutant.path).write_text("# the code changed\n")
    with pytest.raises(SystemExit, match=f"mutant '{mutant.id}'.*not found"):
        tool.check_all(tmp_path)
