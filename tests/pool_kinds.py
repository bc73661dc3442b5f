"""A pytest plugin that keeps the two pools' tests from drifting apart.

* Every test under ``tests/behaviour/`` must run against every pool kind (``Pool`` and
  ``AsyncPool`` with each of their drivers), or, if marked ``per_model``, against one
  driver of each pool class. A kind may be left out only through ``differs``, with a
  reason that points at the docs saying why that kind behaves otherwise.
* Every other test that uses a pool must use both pool classes, or carry
  ``one_model(model, reason)`` for the one it uses: why it cannot be written once.
  ``one_model(model, twin="file::test")`` instead names the same behaviour written
  for the other model, which must name this one back: a pair still written twice,
  each half of which fails the run if the other goes. What a test uses is read from
  its code (:func:`models_reached`), so the rule holds in every file,
  ``tests/faults/`` and ``tests/process_models/`` included.
* Every test in a model-specific file (:data:`MODEL_SPECIFIC_FILES`) must carry
  ``one_model`` for that file's model, whatever it uses.

A test that breaks a rule stops the run at collection (exit status 4), so
``make test`` fails. The check looks at what was collected; when you name single
tests on the command line (``file::test``) it is off, as a part cannot be complete.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from poolkeeper import AsyncDatabase, AsyncPool, Database, Pool
from tests.behaviour.kinds import ALL_KINDS, PER_MODEL_KINDS, Kind

#: Where behaviours live (a directory name under the rootdir's tests/).
BEHAVIOUR_DIR = "tests/behaviour"
#: Files whose tests exist for one concurrency model only, and which model.
MODEL_SPECIFIC_FILES = {
    "tests/test_pool.py": "threads",
    "tests/test_async_pool.py": "asyncio",
}
ALL_KIND_IDS = frozenset(param.id for param in ALL_KINDS)
PER_MODEL_KIND_IDS = frozenset(param.id for param in PER_MODEL_KINDS)
#: The classes a test uses a pool through, by concurrency model (subclasses count).
MODEL_CLASSES: dict[str, tuple[type, ...]] = {
    "threads": (Pool, Database),
    "asyncio": (AsyncPool, AsyncDatabase),
}
MODEL_NAMES = {"threads": "Pool/Database", "asyncio": "AsyncPool/AsyncDatabase"}


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "per_model(reason): a behaviour of the pool's own bookkeeping, run over one "
        "driver per pool class",
        "differs(kind_ids, reason): a documented difference; leave these kinds out (the "
        "reason names the docs page)",
        "one_model(model, reason, twin=None): a test that exists for one concurrency "
        "model only ('threads' or 'asyncio'), and why; or, with twin='file::test', one "
        "half of a behaviour still written once per model",
    ):
        config.addinivalue_line("markers", line)


# -- what a test's code reaches ----------------------------------------------------------

_MISSING = object()


def model_of(obj: object) -> str | None:
    """``"threads"`` or ``"asyncio"`` if ``obj`` is a pool class (or subclass) of that
    model, or a behaviour-suite :class:`Kind`; otherwise None."""
    if isinstance(obj, Kind):
        return obj.model
    if isinstance(obj, type):
        for model, classes in MODEL_CLASSES.items():
            if issubclass(obj, classes):
                return model
    return None


def _lookup(node: ast.expr, namespace: dict[str, Any]) -> Any:
    """The object a name, dotted name or subscripted name (``Pool[Any]``) stands for,
    read from module-level names only; ``_MISSING`` for anything local or computed."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id, _MISSING)
    if isinstance(node, ast.Subscript):
        return _lookup(node.value, namespace)
    if isinstance(node, ast.Attribute):
        base = _lookup(node.value, namespace)
        if inspect.ismodule(base) or isinstance(base, type):
            return getattr(base, node.attr, _MISSING)
    return _MISSING


def _bind_import(node: ast.Import | ast.ImportFrom, namespace: dict[str, Any]) -> None:
    """Add what an ``import`` statement inside a function binds (a test may import the
    pool class it uses locally)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            top = alias.name.split(".", 1)[0]
            namespace[alias.asname or top] = importlib.import_module(
                alias.name if alias.asname else top
            )
    elif node.module and not node.level:
        module = importlib.import_module(node.module)
        for alias in node.names:
            namespace[alias.asname or alias.name] = getattr(module, alias.name, _MISSING)


class _Mentions(ast.NodeVisitor):
    """Every module-level object a piece of code names. A dotted name counts as a
    whole: ``Database.reset_all`` names a method, not the ``Database`` class."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.found: list[Any] = []

    def _name(self, node: ast.expr) -> None:
        obj = _lookup(node, self.namespace)
        if obj is _MISSING:
            self.generic_visit(node)
        else:
            self.found.append(obj)

    def visit_Name(self, node: ast.Name) -> None:
        self._name(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._name(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._name(node.value)
        self.visit(node.slice)

    def visit_Import(self, node: ast.Import) -> None:
        _bind_import(node, self.namespace)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        _bind_import(node, self.namespace)


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


class Reach:
    """Which pool models code under ``tests_dir`` reaches, followed through the
    functions and classes of ``tests_dir`` it names (memoised per object; each file
    is parsed once)."""

    def __init__(self, tests_dir: Path) -> None:
        self.tests_dir = tests_dir.resolve()
        self.memo: dict[int, frozenset[str]] = {}
        self.files_ours: dict[str, bool] = {}
        self.definitions: dict[str, dict[tuple[str, int], Definition]] = {}

    @staticmethod
    def _file_of(obj: object) -> str | None:
        code = getattr(obj, "__code__", None)
        if code is not None:
            return str(code.co_filename)
        module = sys.modules.get(getattr(obj, "__module__", ""))
        return getattr(module, "__file__", None)

    def ours(self, obj: object) -> bool:
        """Whether ``obj`` is a function or class written under ``tests_dir``."""
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            return False
        source_file = self._file_of(obj)
        if source_file is None:
            return False
        if source_file not in self.files_ours:
            self.files_ours[source_file] = (
                Path(source_file).resolve().is_relative_to(self.tests_dir)
            )
        return self.files_ours[source_file]

    def _definition(self, obj: Any) -> Definition | None:
        """The ``def``/``class`` statement of ``obj``, from its file's one parse."""
        source_file = self._file_of(obj)
        if source_file is None:
            return None
        if source_file not in self.definitions:
            index: dict[tuple[str, int], Definition] = {}
            tree = ast.parse(Path(source_file).read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    # A decorated def's code starts at its first decorator.
                    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    index[(node.name, first)] = node
                    index.setdefault((node.name, 0), node)
            self.definitions[source_file] = index
        code = getattr(obj, "__code__", None)
        key = (code.co_name, code.co_firstlineno) if code is not None else (obj.__name__, 0)
        return self.definitions[source_file].get(key)

    def models(self, obj: Any) -> frozenset[str]:
        """The models ``obj`` (a function or class of the test tree) reaches."""
        obj = inspect.unwrap(obj)
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = frozenset()  # a cycle reaches nothing more through itself
        node = self._definition(obj)
        if node is None:
            return frozenset()
        # A function's own globals: two conftest modules may share a module name.
        module = sys.modules.get(obj.__module__)
        found_in = getattr(obj, "__globals__", None) or (vars(module) if module else {})
        mentions = _Mentions(dict(found_in))
        mentions.visit(node)
        reached: set[str] = set()
        for found in mentions.found:
            model = model_of(found)
            if model is not None:
                reached.add(model)
            elif self.ours(found) and found is not obj:
                reached |= self.models(found)
        self.memo[key] = frozenset(reached)
        return self.memo[key]


def models_reached(item: pytest.Item, reach: Reach) -> frozenset[str]:
    """The pool models a collected test uses: named in its code (decorators included),
    in the fixtures it requests, in the test-tree functions and classes those name
    (followed through), or given as a parameter (a pool class, a :class:`Kind`)."""
    reached: set[str] = set()
    function = getattr(item, "function", None)
    if function is not None:
        reached |= reach.models(function)
    fixture_info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        definitions = fixture_info.name2fixturedefs.get(name) if fixture_info else None
        if definitions and reach.ours(inspect.unwrap(definitions[-1].func)):
            reached |= reach.models(definitions[-1].func)
    callspec = getattr(item, "callspec", None)
    for value in callspec.params.values() if callspec is not None else ():
        model = model_of(value)
        reached |= {model} if model else set()
    return frozenset(reached)


# -- the rules ---------------------------------------------------------------------------


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


def _marked_model(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("one_model")
    return str(marker.args[0]) if marker is not None and marker.args else None


def _model_file_problem(item: pytest.Item, name: str, model: str) -> str | None:
    marker = item.get_closest_marker("one_model")
    if _marked_model(item) != model:
        return (
            f"{name}: a test here needs @pytest.mark.one_model({model!r}, reason) "
            "saying why it cannot be a behaviour test in tests/behaviour/"
        )
    if not _reason(marker, 1):
        return f"{name}: one_model({model!r}) without a reason"
    return None


def _twin_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("one_model")
    return str(marker.kwargs.get("twin") or "") if marker is not None else ""


def _one_sided_problem(item: pytest.Item, name: str, models: frozenset[str]) -> str | None:
    """A test outside the behaviour suite that uses one pool class must say why."""
    if len(models) != 1:
        return None
    [model] = models
    marked = _marked_model(item)
    if marked is None:
        return (
            f"{name}: uses {MODEL_NAMES[model]} only; write it once in tests/behaviour/ "
            f"(it then runs on both pools), or mark it @pytest.mark.one_model({model!r}, "
            "reason) saying why it cannot be"
        )
    if marked != model:
        return f"{name}: marked one_model({marked!r}) but uses {MODEL_NAMES[model]} only"
    if not (_reason(item.get_closest_marker("one_model"), 1) or _twin_of(item)):
        return f"{name}: one_model({model!r}) without a reason"
    return None


def _twin_problem(name: str, item: pytest.Item, first_item: dict[str, pytest.Item]) -> str | None:
    """``one_model(model, twin=other)``: ``other`` is the same behaviour written for the
    other model, and says so back. Checked when ``other``'s file was collected."""
    twin = _twin_of(item)
    twin_file = twin.split("::", 1)[0]
    if not twin or not any(other.startswith(twin_file + "::") for other in first_item):
        return None
    other = first_item.get(twin)
    if other is None:
        return f"{name}: its twin {twin} does not exist; write the behaviour in tests/behaviour/"
    if _twin_of(other) != name or _marked_model(other) == _marked_model(item):
        return (
            f"{name}: its twin {twin} must be marked one_model for the other model, "
            f"with twin={name!r}"
        )
    return None


def _coverage_problems(name: str, seen: set[str], item: pytest.Item) -> list[str]:
    problems: list[str] = []
    per_model = item.get_closest_marker("per_model")
    if per_model is not None and not _reason(per_model, 0):
        problems.append(f"{name}: per_model without a reason")
    wanted = PER_MODEL_KIND_IDS if per_model is not None else ALL_KIND_IDS
    differs = item.get_closest_marker("differs")
    if differs is not None:
        # The kinds a documented difference names are left out at generation.
        named = differs.args[0]
        wanted = wanted - ({named} if isinstance(named, str) else set(named))
    if seen != wanted:
        missing = ", ".join(sorted(wanted - seen)) or "none"
        extra = ", ".join(sorted(seen - wanted)) or "none"
        problems.append(f"{name}: runs over {sorted(seen)}; missing {missing}, extra {extra}")
    if differs is not None and "docs/" not in _reason(differs, 1):
        problems.append(f"{name}: differs() needs a reason naming the docs page that says so")
    return problems


def _behaviour_problem(item: pytest.Item, name: str, kinds_seen: set[str]) -> str | None:
    if item.get_closest_marker("one_model"):
        return f"{name}: one_model in the behaviour suite; move it out"
    callspec = getattr(item, "callspec", None)
    kind = None if callspec is None else callspec.params.get("kind")
    if kind is None:
        return f"{name}: not parametrized over the pool kinds (use `kind`)"
    kinds_seen.add(str(getattr(kind, "id", kind)))
    return None


def drift_problems(items: list[pytest.Item], root: Path) -> list[str]:
    """What in ``items`` breaks the rules above, one line per test function."""
    problems: list[str] = []
    reach = Reach(root / "tests")
    kinds_seen: dict[str, set[str]] = defaultdict(set)
    models: dict[str, frozenset[str]] = defaultdict(frozenset)
    first_item: dict[str, pytest.Item] = {}
    for item in items:
        path = _relative(item, root)
        name = item.nodeid.split("[", 1)[0]
        new = name not in first_item
        first_item.setdefault(name, item)
        if path in MODEL_SPECIFIC_FILES:
            problem = _model_file_problem(item, name, MODEL_SPECIFIC_FILES[path])
        elif path.startswith(BEHAVIOUR_DIR + "/"):
            problem = _behaviour_problem(item, name, kinds_seen[name])
        else:
            models[name] |= models_reached(item, reach)
            problem = None
        problems += [problem] if problem and new else []
    for name, seen in kinds_seen.items():
        if seen:
            problems += _coverage_problems(name, seen, first_item[name])
    for name, used in models.items():
        problem = _one_sided_problem(first_item[name], name, used) or _twin_problem(
            name, first_item[name], first_item
        )
        problems += [problem] if problem else []
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
