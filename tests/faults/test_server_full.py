"""A full server is not a dead server: with ``max_connections`` reached, the pool
cannot add connections, yet every caller is served by the ones it holds.

The server here allows 8 non-superuser sessions; the test fills some of them
with sessions of its own ("hogs"), so the pool can open only what is left.
Outcomes are counted per caller and the pool's sessions on the server.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, ConnectionFailed, Pool, PoolError
from poolkeeper.embedded import LocalServer
from tests.faults.conftest import Report, admin_connect, backend_pids

pytestmark = pytest.mark.fault

#: Sessions a non-superuser may open on the server below.
SLOTS = 8


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


@pytest.fixture
def hogs(full_server: LocalServer) -> Iterator[list[psycopg.Connection[Any]]]:
    """Sessions that leave the pool exactly two slots."""
    made = [psycopg.connect(app_dsn(full_server), autocommit=True) for _ in range(SLOTS - 2)]
    try:
        yield made
    finally:
        for conn in made:
            conn.close()


def _refused_detail(pool: Pool | AsyncPool) -> str:
    return str(pool.stats().last_error or "")


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sync_pool_serves_every_caller_from_the_connections_it_has(
    full_server: LocalServer,
    hogs: list[psycopg.Connection[Any]],
    report: Report,
    driver: str,
) -> None:
    name = f"full-sync-{driver}"
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    health: list[str] = []
    with Pool(
        app_dsn(full_server),
        name=name,
        driver=driver,
        min_size=2,
        max_size=6,
        fail_fast_after=0.2,
        timeout=5,
    ) as pool:
        pool.wait(timeout=10)
        stop_at = time.monotonic() + 1.5

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
        on_server = len(backend_pids(full_server, name))
        final_health = pool.health()
        last_error = _refused_detail(pool)
    report["served"] = outcomes["served"]
    report["errors"] = sum(v for k, v in outcomes.items() if k != "served")
    # The pool did try to grow, and the server refused.
    assert "too many clients" in last_error or "reserved" in last_error, last_error
    assert on_server == 2
    assert outcomes["served"] > 0
    assert set(outcomes) == {"served"}, outcomes
    assert "down" not in health, collections.Counter(health)
    assert final_health["status"] == "degraded", final_health


def test_async_pool_serves_every_caller_from_the_connections_it_has(
    full_server: LocalServer,
    hogs: list[psycopg.Connection[Any]],
    report: Report,
) -> None:
    name = "full-async"

    async def run() -> tuple[collections.Counter[str], list[str], dict[str, object], str]:
        outcomes: collections.Counter[str] = collections.Counter()
        health: list[str] = []
        async with AsyncPool(
            app_dsn(full_server),
            name=name,
            min_size=2,
            max_size=6,
            fail_fast_after=0.2,
            timeout=5,
        ) as pool:
            await pool.wait(timeout=10)
            stop_at = time.monotonic() + 1.5

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
            on_server = await asyncio.to_thread(backend_pids, full_server, name)
            assert len(on_server) == 2
            return outcomes, health, pool.health(), _refused_detail(pool)

    outcomes, health, final_health, last_error = asyncio.run(run())
    report["served"] = outcomes["served"]
    report["errors"] = sum(v for k, v in outcomes.items() if k != "served")
    assert "too many clients" in last_error or "reserved" in last_error, last_error
    assert outcomes["served"] > 0
    assert set(outcomes) == {"served"}, outcomes
    assert "down" not in health, collections.Counter(health)
    assert final_health["status"] == "degraded", final_health


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_new_logins_refused_while_open_connections_serve(
    full_server: LocalServer, report: Report, driver: str
) -> None:
    """NOLOGIN (as a password change or pg_hba edit would) refuses every new session
    with 28000; the sessions already open still work, and callers are served."""
    name = f"nologin-{driver}"

    async def run() -> tuple[collections.Counter[str], list[str], str]:
        outcomes: collections.Counter[str] = collections.Counter()
        health: list[str] = []
        async with AsyncPool(
            app_dsn(full_server),
            name=name,
            driver=driver,
            min_size=2,
            max_size=6,
            fail_fast_after=0.2,
            timeout=5,
        ) as pool:
            await pool.wait(timeout=10)
            with admin_connect(full_server) as admin:
                admin.execute("ALTER ROLE app NOLOGIN")
            try:
                stop_at = time.monotonic() + 1.0

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
                assert len(await asyncio.to_thread(backend_pids, full_server, name)) == 2
                return outcomes, health, _refused_detail(pool)
            finally:
                with admin_connect(full_server) as admin:
                    admin.execute("ALTER ROLE app LOGIN")

    outcomes, health, last_error = asyncio.run(run())
    report["served"] = outcomes["served"]
    report["errors"] = sum(v for k, v in outcomes.items() if k != "served")
    assert "not permitted to log in" in last_error, last_error
    assert set(outcomes) == {"served"}, outcomes
    assert "down" not in health, collections.Counter(health)


def test_a_refusing_server_with_no_connection_open_still_fails_fast(
    full_server: LocalServer, hogs: list[psycopg.Connection[Any]]
) -> None:
    """Nothing to serve from: the caller hears at once why no connection can be made."""
    more = [psycopg.connect(app_dsn(full_server), autocommit=True) for _ in range(2)]
    try:
        with Pool(app_dsn(full_server), name="full-none", min_size=1, fail_fast_after=0.2) as pool:
            time.sleep(0.4)
            # ConnectionFailed, not a PoolTimeout after 30 s: it failed fast.
            with pytest.raises(ConnectionFailed, match="refuses new connections") as caught:
                pool.getconn(timeout=30)
            assert pool.health()["status"] == "down"
    finally:
        for conn in more:
            conn.close()
    assert "reserved" in str(caught.value) or "too many clients" in str(caught.value)


def test_sync_pool_keeps_lending_while_its_openers_retry(
    full_server: LocalServer, hogs: list[psycopg.Connection[Any]], report: Report
) -> None:
    """min_size=4 on a server with room for 2: openers retry for reconnect_timeout,
    and the keepalive pings and closes must not queue behind them (the pinged
    connections would be out of the idle stack, and every borrow would time out)."""
    name = "full-openers"
    outcomes: collections.Counter[str] = collections.Counter()
    with Pool(
        app_dsn(full_server),
        name=name,
        min_size=4,
        max_size=6,
        keepalive_interval=0.05,
        timeout=2,
    ) as pool:
        deadline = time.monotonic() + 10
        while pool.stats().connections_opened < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop_at = time.monotonic() + 1.5
        while time.monotonic() < stop_at:
            # Idle between borrows for longer than keepalive_interval: pings are due.
            time.sleep(0.12)
            try:
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
                outcomes["served"] += 1
            except PoolError as exc:
                outcomes[type(exc).__name__] += 1
        stats = pool.stats()
        on_server = len(backend_pids(full_server, name))
    report["served"] = outcomes["served"]
    report["errors"] = sum(v for k, v in outcomes.items() if k != "served")
    assert on_server == 2
    assert set(outcomes) == {"served"}, (outcomes, stats)
    # Open connections: one may be out for a keepalive ping at this instant.
    assert stats.size - stats.opening == 2, stats


def test_async_pool_keeps_lending_while_its_openers_retry(
    full_server: LocalServer, hogs: list[psycopg.Connection[Any]], report: Report
) -> None:
    """The asyncio twin: openers are tasks of their own, so pings never wait for them."""
    name = "full-openers-async"

    async def run() -> tuple[collections.Counter[str], int, int]:
        outcomes: collections.Counter[str] = collections.Counter()
        async with AsyncPool(
            app_dsn(full_server),
            name=name,
            min_size=4,
            max_size=6,
            keepalive_interval=0.05,
            timeout=2,
        ) as pool:
            deadline = time.monotonic() + 10
            while pool.stats().connections_opened < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            stop_at = time.monotonic() + 1.5
            while time.monotonic() < stop_at:
                await asyncio.sleep(0.12)
                try:
                    async with pool.connection() as conn:
                        await conn.execute("SELECT 1")
                    outcomes["served"] += 1
                except PoolError as exc:
                    outcomes[type(exc).__name__] += 1
            stats = pool.stats()
            on_server = len(await asyncio.to_thread(backend_pids, full_server, name))
            # Open connections: one may be out for a keepalive ping at this instant.
            return outcomes, stats.size - stats.opening, on_server

    outcomes, open_count, on_server = asyncio.run(run())
    report["served"] = outcomes["served"]
    report["errors"] = sum(v for k, v in outcomes.items() if k != "served")
    assert on_server == 2
    assert set(outcomes) == {"served"}, outcomes
    assert open_count == 2
