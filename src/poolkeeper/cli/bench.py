"""``poolkeeper bench``: the side-by-side benchmark of ``benchmarks/``, against your server.

The benchmark scripts live in the source tree (``benchmarks/``), not in the
wheel: they pull in every peer pool (psycopg_pool, SQLAlchemy, psycopg2,
asyncpg) that poolkeeper itself does not need.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import poolkeeper
from poolkeeper.cli.errors import CliError, ExitCode

__all__ = ["load_benchmarks", "run_bench"]


def load_benchmarks() -> ModuleType:
    """``benchmarks.run`` from the checkout this poolkeeper was installed from."""
    # src/poolkeeper/__init__.py -> the checkout's root, for an editable install.
    root = Path(poolkeeper.__file__).resolve().parents[2]
    if (root / "benchmarks" / "run.py").is_file():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        return importlib.import_module("benchmarks.run")
    raise CliError(
        "the benchmark scripts are not installed: they live in poolkeeper's source tree, "
        "not in the package",
        "run it from a clone ('pip install -e .[bench]' there, or 'make bench')",
        ExitCode.MISSING_EXTRA,
    )


def run_bench(dsn: str | None, harness_args: list[str]) -> int:
    """Run the benchmark against ``dsn`` (default ``DATABASE_URL``); 0 when it completed."""
    target = dsn or os.environ.get("DATABASE_URL", "").strip()
    if not target:
        raise CliError(
            "no server given: poolkeeper bench measures your own database",
            "set DATABASE_URL or pass --dsn (python -m benchmarks.run alone starts a "
            "throwaway server)",
            ExitCode.USAGE,
        )
    run = load_benchmarks()
    code: int = run.main(["--dsn", target, *harness_args])
    return code
