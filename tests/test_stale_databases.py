"""A run killed on a shared server leaves its databases behind; a later run on the same
host drops them, and never a database a run that may still be alive could be using."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import PID_SPACE, RUN_TAG, drop_stale_databases, run_tag


def _dead_pid() -> int:
    """The pid of a process that has ended and been reaped: surely no live process."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait(timeout=30)
    return child.pid


def _exists(admin: psycopg.Connection[Any], names: list[str]) -> set[str]:
    rows = admin.execute(
        "SELECT datname FROM pg_database WHERE datname = ANY(%s)", [names]
    ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def databases(admin: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    """Databases as runs of this and other hosts name theirs, removed after the test."""
    dead = _dead_pid()
    # Another host's (or container's) run: its pid says nothing about processes here.
    elsewhere = f"{int(PID_SPACE, 16) ^ 0xFFFFFFFF:08x}_{dead}_{RUN_TAG[-6:]}"
    names = {
        "stale": f"pk_test_{run_tag(dead)}",
        "live": f"pk_test_{run_tag(os.getpid())}",
        "in use": f"pk_shutdown_hook_{run_tag(dead)}",
        "elsewhere": f"pk_test_{elsewhere}",
    }
    for name in names.values():
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield names
    finally:
        for name in names.values():
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_only_the_database_of_a_dead_run_of_this_host_with_no_session_is_dropped(
    dsn: str, admin: psycopg.Connection[Any], databases: dict[str, str]
) -> None:
    with psycopg.connect(make_conninfo(dsn, dbname=databases["in use"])) as session:
        session.execute("SELECT 1")
        dropped = drop_stale_databases(dsn)

    assert databases["stale"] in dropped
    assert _exists(admin, list(databases.values())) == {
        databases["live"],
        databases["in use"],
        databases["elsewhere"],
    }
