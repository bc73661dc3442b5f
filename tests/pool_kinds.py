"""A pytest plugin that keeps the two pools' tests from drifting apart.

* Every test under ``tests/behaviour/`` must run against every pool kind (``Pool`` and
  ``AsyncPool`` with each of their drivers), or, if marked ``per_model``, against one
  driver of each pool class. A kind may be skipped only through ``differs``, with a
  reason that points at the docs saying why that kind behaves otherwise.
* Every test in a model-specific file (:data:`MODEL_SPECIFIC_FILES`) must carry
  ``one_model(model, reason)`` for that file's model: why it cannot be written once.

A test that breaks either rule stops the run at collection (exit status 4), so
``make test`` fails. The check looks at what was collected; when you name single
tests on the command line (``file::test``) it is off, as a part cannot be complete.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.behaviour.kinds import ALL_KINDS, PER_MODEL_KINDS

#: Where behaviours live (a directory name under the rootdir's tests/).
BEHAVIOUR_DIR = "tests/behaviour"
#: Files whose tests exist for one concurrency model only, and which model.
MODEL_SPECIFIC_FILES = {
    "tests/test_pool.py": "threads",
    "tests/test_async_pool.py": "asyncio",
}
ALL_KIND_IDS = frozenset(param.id for param in ALL_KINDS)
PER_MODEL_KIND_IDS = frozenset(param.id for param in PER_MODEL_KINDS)


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "per_model(reason): a behaviour of the pool's own bookkeeping, run over one "
        "driver per pool class",
        "differs(kind_ids, reason): a documented difference; skip these kinds (the "
        "reason names the docs page)",
        "one_model(model, reason): a test that exists for one concurrency model only "
        "('threads' or 'asyncio'), and why",
    ):
        config.addinivalue_line("markers", line)


def _relative(item: pytest.Item, root: Path) -> str:
    try:
        return item.path.relative_to(root).as_posix()
    except ValueError:
        return item.path.as_posix()


def _reason(marker: pytest.Mark | None, position: int) -> str:
    if marker is None:
        return ""
    value: Any = marker.kwargs.get("reason")
    if value is None and len(marker.args) > position:
        value = marker.args[position]
    return str(value or "").strip()


def _model_file_problem(item: pytest.Item, name: str, model: str) -> str | None:
    marker = item.get_closest_marker("one_model")
    if marker is None or not marker.args or marker.args[0] != model:
        return (
            f"{name}: a test here needs @pytest.mark.one_model({model!r}, reason) "
            "saying why it cannot be a behaviour test in tests/behaviour/"
        )
    if not _reason(marker, 1):
        return f"{name}: one_model({model!r}) without a reason"
    return None


def _coverage_problems(name: str, seen: set[str], item: pytest.Item) -> list[str]:
    problems: list[str] = []
    per_model = item.get_closest_marker("per_model")
    if per_model is not None and not _reason(per_model, 0):
        problems.append(f"{name}: per_model without a reason")
    wanted = PER_MODEL_KIND_IDS if per_model is not None else ALL_KIND_IDS
    if seen != wanted:
        missing = ", ".join(sorted(wanted - seen)) or "none"
        extra = ", ".join(sorted(seen - wanted)) or "none"
        problems.append(f"{name}: runs over {sorted(seen)}; missing {missing}, extra {extra}")
    differs = item.get_closest_marker("differs")
    if differs is not None and "docs/" not in _reason(differs, 1):
        problems.append(f"{name}: differs() needs a reason naming the docs page that says so")
    return problems


def drift_problems(items: list[pytest.Item], root: Path) -> list[str]:
    """What in ``items`` breaks the rules above, one line per test function."""
    problems: list[str] = []
    kinds_seen: dict[str, set[str]] = defaultdict(set)
    first_item: dict[str, pytest.Item] = {}
    for item in items:
        path = _relative(item, root)
        name = item.nodeid.split("[", 1)[0]
        if path in MODEL_SPECIFIC_FILES:
            problem = _model_file_problem(item, name, MODEL_SPECIFIC_FILES[path])
            problems += [problem] if problem else []
            continue
        if not path.startswith(BEHAVIOUR_DIR + "/"):
            continue
        if item.get_closest_marker("one_model"):
            problems.append(f"{name}: one_model in the behaviour suite; move it out")
        callspec = getattr(item, "callspec", None)
        kind = None if callspec is None else callspec.params.get("kind")
        if kind is None:
            problems.append(f"{name}: not parametrized over the pool kinds (use `kind`)")
            continue
        kinds_seen[name].add(str(getattr(kind, "id", kind)))
        first_item.setdefault(name, item)
    for name, seen in kinds_seen.items():
        problems += _coverage_problems(name, seen, first_item[name])
    return problems


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselect anything
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if any("::" in str(arg) for arg in config.args):
        return
    problems = drift_problems(items, config.rootpath)
    if problems:
        raise pytest.UsageError(
            "tests that would let Pool and AsyncPool drift apart (see docs/testing.md, "
            "'The behaviour suite'):\n  " + "\n  ".join(problems)
        )
