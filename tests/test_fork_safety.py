"""Fork safety as users meet it: a child that closes what it inherited and exits.

Each test runs tests/fork_scenario.py, a program that owns a pool, holds one of its
connections and forks children (``os.fork`` and ``multiprocessing``'s fork start
method) that close the inherited connection and the pool, collect garbage and end by
returning, by ``sys.exit`` or by an uncaught exception. After each child the parent
runs a query on every one of its connections and looks at pg_stat_activity: its
backends must be the ones it had before the fork. Without the step that makes
inherited sockets inert in a child (``forking.neutralise_fd``), the child's close()
sends the server a Terminate message on the parent's socket and these tests fail.

The last test forks from the test itself: a child collecting its inherited
connections is not warned about them (the pool keeps them alive there).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, Pool
from tests.conftest import backends, in_forked_child, unique_pool_name

SCENARIO = Path(__file__).with_name("fork_scenario.py")
VARIANTS = [
    f"{how}:{exit_how}"
    for how in ("os.fork", "multiprocessing")
    for exit_how in ("return", "sys.exit", "raise")
]
EXIT_CODES = {"return": 0, "sys.exit": 3, "raise": 1}

needs_asyncpg = pytest.mark.skipif(
    importlib.util.find_spec("asyncpg") is None, reason="asyncpg is not installed"
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def run_scenario(dsn: str, api: str, driver: str) -> list[dict[str, Any]]:
    name = f"pk-fork-{api}-{driver}"
    # Its own session, so that on a timeout the program and any child it has left
    # are killed together, by process group.
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), api, driver, dsn, name, *VARIANTS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the scenario did not finish in 45 s; it said:\n{out}\n{err}")
    assert proc.returncode == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    assert [r["variant"] for r in reports] == VARIANTS, err
    return reports


@pytest.mark.parametrize(
    ("api", "driver"),
    [
        ("pool", "psycopg"),
        ("pool", "psycopg2"),
        ("database", "psycopg"),
        ("database", "psycopg2"),
        ("asyncpool", "psycopg"),
        pytest.param("asyncpool", "asyncpg", marks=needs_asyncpg),
        ("asyncdatabase", "psycopg"),
        pytest.param("asyncdatabase", "asyncpg", marks=needs_asyncpg),
    ],
)
def test_a_child_closing_what_it_inherited_leaves_the_parents_sessions_alive(
    dsn: str, api: str, driver: str
) -> None:
    reports = run_scenario(dsn, api, driver)
    failures = []
    for report in reports:
        exit_how = report["variant"].split(":")[1]
        if report["exitcode"] != EXIT_CODES[exit_how]:
            failures.append(f"{report['variant']}: the child exited {report['exitcode']}")
        # Every connection answered, each on the backend it had before the fork, and
        # the server lists exactly those backends for the pool.
        if report["errors"]:
            failures.append(f"{report['variant']}: {report['errors']}")
        if not (len(report["before"]) == 3 and report["queried"] == report["before"]):
            failures.append(
                f"{report['variant']}: backends {report['before']} before the fork, "
                f"{report['queried']} answered after"
            )
        if report["after"] != report["before"]:
            failures.append(
                f"{report['variant']}: pg_stat_activity listed {report['before']} before "
                f"the fork, {report['after']} after"
            )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("pool_class", [Pool, AsyncPool])
def test_a_child_is_not_warned_about_the_connections_it_inherited(
    dsn: str,
    pool_class: type[Pool] | type[AsyncPool],
    admin: psycopg.Connection[Any],
    request: pytest.FixtureRequest,
) -> None:
    # The child never opened its parent's connections: collecting them there would make
    # psycopg warn that each "was deleted while still open" (a ResourceWarning, shown
    # under -X dev and by pytest), about connections the child must not close anyway.
    name = unique_pool_name(request)
    settings: dict[str, Any] = {"name": name, "min_size": 3, "max_size": 3}
    loop = asyncio.new_event_loop()
    pool: Any = None
    try:
        if pool_class is Pool:
            pool = Pool(dsn, **settings)
            pool.wait(5)
        else:

            async def opened() -> AsyncPool:
                made = AsyncPool(dsn, **settings)
                await made.wait(5)
                return made

            pool = loop.run_until_complete(opened())
        before = backends(admin, name)
        assert len(before) == 3

        def collect() -> list[str]:
            gc.collect()
            return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]

        # Recorded from the fork on: the pool's fork hook runs before any step.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (said,) = in_forked_child(collect)
        assert said == "ok: []", said
        assert backends(admin, name) == before
    finally:
        if isinstance(pool, Pool):
            pool.close()
        elif pool is not None:
            loop.run_until_complete(pool.close())
        loop.close()
