"""A full server is not a dead server: with ``max_connections`` reached, the pool
cannot add connections, yet every caller is served by the ones it holds.

The server here allows 8 non-superuser sessions; the test fills some of them
with sessions of its own ("hogs"), so the pool can open only what is left.
Outcomes are counted per caller and the pool's sessions on the server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, ConnectionFailed, Pool, PoolError
from poolkeeper.embedded import LocalServer
from tests.behaviour.kinds import PER_MODEL_KINDS, AnyPool, Kind, fetchval
from tests.faults.conftest import Report, admin_connect, backend_pids

pytestmark = pytest.mark.fault

#: Sessions a non-superuser may open on the server below.
SLOTS = 8
#: Pools that serve from two connections: they may grow to 6, the server lets them have 2.
SERVING: dict[str, Any] = {"min_size": 2, "max_size": 6, "fail_fast_after": 0.2, "timeout": 5}
#: Pools whose openers retry for ever: min_size=4 on a server with room for 2; the
#: short keepalive_interval makes pings due between borrows.
RETRYING: dict[str, Any] = {"min_size": 4, "max_size": 6, "keepalive_interval": 0.05, "timeout": 2}

Outcomes = collections.Counter[str]


@pytest.fixture(scope="module")
def full_server() -> Iterator[LocalServer]:
    """max_connections=10 with 2 reserved for superusers; the pools log in as ``app``."""
    server = LocalServer(
        settings={"max_connections": str(SLOTS + 2), "superuser_reserved_connections": "2"}
    ).start()
    try:
        with admin_connect(server) as admin:
            admin.execute("CREATE ROLE app LOGIN")
        yield server
    finally:
        server.stop("immediate", remove=True)


def app_dsn(server: LocalServer) -> str:
    return server.dsn.replace("postgres@", "app@")


@contextlib.contextmanager
def app_sessions(server: LocalServer, count: int) -> Iterator[list[psycopg.Connection[Any]]]:
    """Hold ``count`` sessions of ``app`` on ``server`` (closed on exit).

    A session's slot is free again only once its backend process has exited, which
    happens after the client's ``close()`` has returned: right after an earlier test,
    its sessions (hogs, pool connections, admin queries) may still hold slots for a
    moment, and a connect refused for that is tried again. Anything still holding a
    slot after 10 s is a leak, and fails the test here.
    """
    made: list[psycopg.Connection[Any]] = []
    deadline = time.monotonic() + 10
    try:
        while len(made) < count:
            try:
                made.append(psycopg.connect(app_dsn(server), autocommit=True, connect_timeout=5))
            except psycopg.OperationalError as exc:
                if not _refused_for_slots(str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        yield made
    finally:
        for conn in made:
            conn.close()


def _refused_for_slots(message: str) -> bool:
    return "too many clients" in message or "reserved" in message


@pytest.fixture
def hogs(full_server: LocalServer) -> Iterator[list[psycopg.Connection[Any]]]:
    """Sessions that leave the pool exactly two slots."""
    with app_sessions(full_server, SLOTS - 2) as made:
        yield made


def _sessions_of(hog: psycopg.Connection[Any], name: str) -> int:
    """How many sessions the pool ``name`` has on the server, asked through a hog: a
    new (admin) session would need a slot the pool's retrying openers also take, for
    a moment, at every attempt."""
    row = hog.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]
    ).fetchone()
    assert row is not None
    return int(row[0])


def _refused_detail(pool: Pool | AsyncPool) -> str:
    return str(pool.stats().last_error or "")


def _record(report: Report, outcomes: Outcomes) -> None:
    report["served"] = outcomes["served"]
    report["errors"] = sum(v for k, v in outcomes.items() if k != "served")


def _assert_all_served(outcomes: Outcomes, health: list[str]) -> None:
    assert outcomes["served"] > 0
    assert set(outcomes) == {"served"}, outcomes
    assert "down" not in health, collections.Counter(health)


def _serve(pool: Pool, seconds: float) -> tuple[Outcomes, list[str]]:
    """Six threads borrow for ``seconds`` while the pool's health is sampled."""
    outcomes: Outcomes = collections.Counter()
    lock = threading.Lock()
    health: list[str] = []
    stop_at = time.monotonic() + seconds

    def caller() -> None:
        while time.monotonic() < stop_at:
            try:
                with pool.connection() as conn:
                    conn.cursor().execute("SELECT pg_sleep(0.005)")
                what = "served"
            except PoolError as exc:
                what = type(exc).__name__
            with lock:
                outcomes[what] += 1

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        health.append(str(pool.health()["status"]))
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    return outcomes, health


async def _serve_async(pool: AsyncPool, seconds: float) -> tuple[Outcomes, list[str]]:
    """Six tasks borrow for ``seconds`` while the pool's health is sampled."""
    outcomes: Outcomes = collections.Counter()
    health: list[str] = []
    stop_at = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < stop_at:
            try:
                async with pool.connection() as conn:
                    await conn.execute("SELECT pg_sleep(0.005)")
                outcomes["served"] += 1
            except PoolError as exc:
                outcomes[type(exc).__name__] += 1
                await asyncio.sleep(0)

    async def watch() -> None:
        while time.monotonic() < stop_at:
            health.append(str(pool.health()["status"]))
            await asyncio.sleep(0.05)

    await asyncio.gather(watch(), *(caller() for _ in range(6)))
    return outcomes, health


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sync_pool_serves_every_caller_from_the_connections_it_has(
    full_server: LocalServer,
    hogs: list[psycopg.Connection[Any]],
    report: Report,
    driver: str,
) -> None:
    name = f"full-sync-{driver}"
    with Pool(app_dsn(full_server), name=name, driver=driver, **SERVING) as pool:
        pool.wait(timeout=10)
        outcomes, health = _serve(pool, 1.5)
        on_server = _sessions_of(hogs[0], name)
        final_health = pool.health()
        last_error = _refused_detail(pool)
    _record(report, outcomes)
    # The pool did try to grow, and the server refused.
    assert _refused_for_slots(last_error), last_error
    assert on_server == 2
    _assert_all_served(outcomes, health)
    assert final_health["status"] == "degraded", final_health


def test_async_pool_serves_every_caller_from_the_connections_it_has(
    full_server: LocalServer,
    hogs: list[psycopg.Connection[Any]],
    report: Report,
) -> None:
    name = "full-async"

    async def run() -> tuple[Outcomes, list[str], dict[str, object], str]:
        async with AsyncPool(app_dsn(full_server), name=name, **SERVING) as pool:
            await pool.wait(timeout=10)
            outcomes, health = await _serve_async(pool, 1.5)
            assert _sessions_of(hogs[0], name) == 2
            return outcomes, health, pool.health(), _refused_detail(pool)

    outcomes, health, final_health, last_error = asyncio.run(run())
    _record(report, outcomes)
    assert _refused_for_slots(last_error), last_error
    _assert_all_served(outcomes, health)
    assert final_health["status"] == "degraded", final_health


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_new_logins_refused_while_open_connections_serve(
    full_server: LocalServer, report: Report, driver: str
) -> None:
    """NOLOGIN (as a password change or pg_hba edit would) refuses every new session
    with 28000; the sessions already open still work, and callers are served."""
    name = f"nologin-{driver}"

    async def run() -> tuple[Outcomes, list[str], str]:
        async with AsyncPool(app_dsn(full_server), name=name, driver=driver, **SERVING) as pool:
            await pool.wait(timeout=10)
            with admin_connect(full_server) as admin:
                admin.execute("ALTER ROLE app NOLOGIN")
            try:
                outcomes, health = await _serve_async(pool, 1.0)
                assert len(await asyncio.to_thread(backend_pids, full_server, name)) == 2
                return outcomes, health, _refused_detail(pool)
            finally:
                with admin_connect(full_server) as admin:
                    admin.execute("ALTER ROLE app LOGIN")

    outcomes, health, last_error = asyncio.run(run())
    _record(report, outcomes)
    assert "not permitted to log in" in last_error, last_error
    _assert_all_served(outcomes, health)


@pytest.mark.parametrize("kind", PER_MODEL_KINDS)
async def test_a_refusing_server_with_no_connection_open_still_fails_fast(
    full_server: LocalServer,
    hogs: list[psycopg.Connection[Any]],
    kind_pools: Callable[..., AnyPool],
    kind: Kind,
) -> None:
    """Nothing to serve from: the caller hears at once why no connection can be made."""
    with app_sessions(full_server, 2):
        pool = kind_pools(
            app_dsn(full_server), name=f"full-none-{kind.id}", min_size=1, fail_fast_after=0.2
        )
        await asyncio.sleep(0.4)
        # ConnectionFailed, not a PoolTimeout after 30 s: it failed fast.
        with pytest.raises(ConnectionFailed, match="refuses new connections") as caught:
            await pool.getconn(timeout=30)
        assert pool.health()["status"] == "down"
        await pool.close(timeout=1.0)
    assert _refused_for_slots(str(caught.value))


@pytest.mark.parametrize("kind", PER_MODEL_KINDS)
async def test_a_pool_keeps_lending_while_its_openers_retry(
    full_server: LocalServer,
    hogs: list[psycopg.Connection[Any]],
    kind_pools: Callable[..., AnyPool],
    report: Report,
    kind: Kind,
) -> None:
    """Openers retry for reconnect_timeout, and the keepalive pings and closes must
    not queue behind them (the pinged connections would be out of the idle stack,
    and every borrow would time out): a Pool's openers are threads, an AsyncPool's
    tasks of their own."""
    name = f"full-openers-{kind.id}"
    outcomes: Outcomes = collections.Counter()
    pool = kind_pools(app_dsn(full_server), name=name, **RETRYING)
    deadline = time.monotonic() + 10
    while pool.stats().connections_opened < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stop_at = time.monotonic() + 1.5
    while time.monotonic() < stop_at:
        # Idle between borrows for longer than keepalive_interval: pings are due.
        await asyncio.sleep(0.12)
        try:
            async with pool.connection() as conn:
                await fetchval(conn, "SELECT 1")
            outcomes["served"] += 1
        except PoolError as exc:
            outcomes[type(exc).__name__] += 1
    stats = pool.stats()
    on_server = _sessions_of(hogs[0], name)
    await pool.close(timeout=1.0)
    _record(report, outcomes)
    assert on_server == 2
    assert set(outcomes) == {"served"}, (outcomes, stats)
    # Open connections: one may be out for a keepalive ping at this instant.
    assert stats.size - stats.opening == 2, stats
