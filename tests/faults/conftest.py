"""Fixtures for the fault suite: servers the tests own, a proxy, and a measurement log.

Every server here is started by the test that breaks it (or shared by a module
whose tests leave it running), so stopping or restarting it never disturbs
the rest of the suite. Measurements go to a JSON file (``POOLKEEPER_FAULT_REPORT``,
else a new ``poolkeeper-fault-report-*.json`` in the temp directory for each run, so
parallel runs never overwrite each other) and to the terminal summary;
docs/reliability.md quotes them.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest

from poolkeeper import Pool
from poolkeeper.embedded import LocalServer
from tests.behaviour.kinds import AnyPool, Kind
from tests.faults.proxy import FaultProxy

_measurements: dict[str, dict[str, object]] = {}
_measurements_lock = threading.Lock()


class Report:
    """What one fault test measured, keyed by scenario name."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario

    def __setitem__(self, key: str, value: object) -> None:
        if isinstance(value, float):
            value = round(value, 3)
        with _measurements_lock:
            _measurements.setdefault(self.scenario, {})[key] = value


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """Record measurements of this scenario for docs/reliability.md."""
    return Report(request.node.name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print and save what the fault tests measured."""
    if not _measurements:
        return
    path = report_path()
    with open(path, "w", encoding="utf-8") as out:
        json.dump(_measurements, out, indent=2, sort_keys=True)
    terminalreporter.section("fault suite measurements")
    for scenario, values in sorted(_measurements.items()):
        shown = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
        terminalreporter.write_line(f"{scenario}: {shown}")
    terminalreporter.write_line(f"(saved to {path})")


def report_path() -> str:
    """Where this run's measurements go: ``POOLKEEPER_FAULT_REPORT``, else a file
    of this run's own in the temp directory."""
    given = os.environ.get("POOLKEEPER_FAULT_REPORT")
    if given:
        return given
    handle, path = tempfile.mkstemp(prefix="poolkeeper-fault-report-", suffix=".json")
    os.close(handle)
    return path


@pytest.fixture(scope="session")
def shared_server() -> Iterator[LocalServer]:
    """One server for the fault tests that leave it running (terminate, proxy, lifetimes)."""
    server = LocalServer().start()
    try:
        yield server
    finally:
        server.stop(remove=True)


ServerFactory = Callable[..., LocalServer]


@pytest.fixture
def own_server() -> Iterator[ServerFactory]:
    """Make servers this test may stop and start; ``start=False`` leaves one down."""
    servers: list[LocalServer] = []

    def factory(*, start: bool = True, **kwargs: Any) -> LocalServer:
        server = LocalServer(**kwargs)
        servers.append(server)
        return server.start() if start else server

    yield factory
    for server in servers:
        server.stop("immediate", remove=True)


@pytest.fixture
def proxy_to() -> Iterator[Callable[[int], FaultProxy]]:
    """Start proxies in front of a port; all are closed after the test."""
    proxies: list[FaultProxy] = []

    def factory(port: int) -> FaultProxy:
        proxy = FaultProxy(port)
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def pools() -> Iterator[Callable[..., Pool]]:
    """Build pools that are closed after the test, whatever happened."""
    made: list[Pool] = []

    def factory(dsn: Any, **kwargs: Any) -> Pool:
        pool = Pool(dsn, **kwargs)
        made.append(pool)
        return pool

    yield factory
    for pool in made:
        pool.close(timeout=1.0)


def admin_connect(server: LocalServer) -> psycopg.Connection[Any]:
    """A plain autocommit connection to ``server``, outside any pool."""
    return psycopg.connect(server.dsn, autocommit=True, connect_timeout=5)


def backend_pids(server: LocalServer, application_name: str) -> set[int]:
    """Pids of the backends connected with ``application_name``."""
    with admin_connect(server) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return {row[0] for row in rows}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; return the seconds it took, or fail the test."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def terminate_all(server: LocalServer, application_name: str) -> int:
    """pg_terminate_backend every backend of ``application_name``; how many there were."""
    with admin_connect(server) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            [application_name],
        ).fetchone()
    wait_until(lambda: not backend_pids(server, application_name), 5, "terminated backends to exit")
    return int(killed[0]) if killed else 0


@pytest.fixture
async def kind_pools(kind: Kind) -> AsyncIterator[Callable[..., AnyPool]]:
    """Build pools of the test's ``kind`` (parametrize it over the behaviour suite's
    kinds), closed after the test, whatever happened."""
    made: list[AnyPool] = []

    def factory(dsn: Any, **kwargs: Any) -> AnyPool:
        pool = kind.pool(dsn, **kwargs)
        made.append(pool)
        return pool

    yield factory
    for pool in made:
        await pool.close(timeout=1.0)
