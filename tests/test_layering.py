"""Each concern has one home: the pool core imports no driver, only ``conninfo.py``
parses connection strings. Checked on the source, so a new import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "poolkeeper"
DRIVER_PACKAGES = {"psycopg", "psycopg2", "asyncpg"}
# Modules that may talk to a driver package: the drivers themselves, the one
# conninfo parser, and the tools around the library (CLI, embedded server, metrics,
# and the compat modules, which speak one driver's pool API by design).
MAY_IMPORT_DRIVERS = {"conninfo.py", "embedded.py"}
MAY_IMPORT_DRIVERS_UNDER = {"drivers", "cli", "integrations", "metrics", "compat"}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_pool_core_imports_no_driver() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in MAY_IMPORT_DRIVERS_UNDER or str(relative) in MAY_IMPORT_DRIVERS:
            continue
        for name in _imported(path):
            if name.split(".")[0] in DRIVER_PACKAGES:
                offenders.append(f"{relative} imports {name}")
    assert not offenders, offenders


def test_only_conninfo_parses_connection_strings() -> None:
    parsers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "psycopg.conninfo" in _imported(path)
    )
    assert parsers == ["conninfo.py"]
