"""asyncpg's own no-answer guard on a silent network: the pool's default, not a
ceiling. What every driver shares (a killed backend, a reset connection, a black
hole, a silent server) is written once, for every pool kind, in test_backend_loss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from poolkeeper import AsyncPool
from poolkeeper.embedded import LocalServer
from poolkeeper.policy import silence_limit
from tests.faults.conftest import Report
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.fault


async def _warm(pool: AsyncPool, count: int) -> None:
    """Borrow ``count`` connections at once so that ``count`` are open and idle."""
    await pool.wait(10)
    held = [await pool.getconn(timeout=5) for _ in range(count)]
    for conn in held:
        await conn.fetchval("SELECT 1")
    for conn in held:
        await pool.putconn(conn)


@pytest.mark.one_model("asyncio", "asyncpg's own no-answer guard (an asyncio-only driver)")
async def test_asyncpg_no_answer_guard_yields_to_the_caller_and_to_session_changes(
    shared_server: LocalServer,
    proxy_to: Callable[[int], FaultProxy],
    report: Report,
) -> None:
    """asyncpg's no-answer guard is the pool's default timeout, not a ceiling: a
    caller's own ``timeout`` wins, and a session that ran SET (which may have raised
    its statement_timeout) gets no client-side limit, as with psycopg's guard."""
    pytest.importorskip("asyncpg")
    from poolkeeper.drivers.asyncpg_async import NoAnswerTimeout

    proxy = proxy_to(shared_server.port)
    dsn = proxy.dsn
    statement_timeout = 0.5
    limit = silence_limit(statement_timeout)
    pool = AsyncPool(
        dsn, name="fault-asyncpg-guard", min_size=2, max_size=2, connect_timeout=2.0,
        statement_timeout=statement_timeout, driver="asyncpg",
    )  # fmt: skip
    try:
        await _warm(pool, 2)
        own_timeout, changed = await pool.getconn(), await pool.getconn()
        await changed.execute("SET application_name = 'guard-test'")
        proxy.blackhole()

        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as raised:
            await own_timeout.fetchval("SELECT 1", timeout=0.3)
        own_timeout_after = time.monotonic() - start
        report["own_timeout_after_s"] = own_timeout_after
        assert not isinstance(raised.value, NoAnswerTimeout)
        assert own_timeout_after < limit

        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as raised:
            await asyncio.wait_for(changed.fetchval("SELECT 1"), limit + 1.0)
        changed_waited = time.monotonic() - start
        report["changed_session_waited_s"] = changed_waited
        assert not isinstance(raised.value, NoAnswerTimeout)
        assert changed_waited >= limit + 0.9
        for conn in (own_timeout, changed):
            await pool.putconn(conn)
    finally:
        await pool.close(timeout=1.0)


class _Tagged(asyncpg.Record):
    """A record_class of the caller's: the guard must not lose it."""


Call = Callable[[Any], Awaitable[object]]

#: Each method of asyncpg's connection on a silent network, on a session left as
#: ``before`` made it: what the caller gets, by ``kind``: "guard" (NoAnswerTimeout
#: at the silence limit), "own" (asyncpg's plain TimeoutError at the caller's 0.3 s)
#: or "none" (no client-side limit: still waiting when the test stops waiting).
_GUARD_CASES: list[tuple[str, Call | None, Call, str]] = [
    ("fetch", None, lambda c: c.fetch("SELECT 1"), "guard"),
    ("fetchval", None, lambda c: c.fetchval("SELECT 1"), "guard"),
    ("fetchrow", None, lambda c: c.fetchrow("SELECT 1"), "guard"),
    ("fetch with arguments", None, lambda c: c.fetch("SELECT $1::int", 1), "guard"),
    (
        "fetchrow, record_class",
        None,
        lambda c: c.fetchrow("SELECT 1", record_class=_Tagged),
        "guard",
    ),
    ("execute with arguments", None, lambda c: c.execute("SELECT $1::int", 1), "guard"),
    ("fetchval, timeout=None", None, lambda c: c.fetchval("SELECT 1", timeout=None), "guard"),
    (
        "fetchval after user code ran",
        lambda c: c.execute("SELECT now()"),
        lambda c: c.fetchval("SELECT 1"),
        "guard",
    ),
    (
        # asyncpg's introspection set jit for the session, not statement_timeout.
        "fetchval after a type was introspected",
        lambda c: c.fetchval("SELECT $1::pk_guard_mood", "ok"),
        lambda c: c.fetchval("SELECT 1"),
        "guard",
    ),
    ("fetchval, own timeout", None, lambda c: c.fetchval("SELECT 1", timeout=0.3), "own"),
    (
        "execute with arguments, own timeout",
        None,
        lambda c: c.execute("SELECT $1::int", 1, timeout=0.3),
        "own",
    ),
    ("execute, a script", None, lambda c: c.execute("SELECT 1"), "none"),
    ("fetchmany", None, lambda c: c.fetchmany("SELECT $1::int", [(1,)]), "none"),
    ("executemany", None, lambda c: c.executemany("SELECT $1::int", [(1,)]), "none"),
    (
        "fetchval after SET",
        lambda c: c.execute("SET application_name = 'x'"),
        lambda c: c.fetchval("SELECT 1"),
        "none",
    ),
    (
        "fetchval of set_config",
        None,
        lambda c: c.fetchval("SELECT set_config('work_mem', '7MB', false)"),
        "none",
    ),
]


async def _attempt(conn: Any, call: Call, limit: float, patience: float) -> tuple[str, float]:
    """What ``call`` on ``conn`` got ("guard", "own", "none" as in _GUARD_CASES, or
    "answered"), and after how long; given up on after ``patience`` seconds."""
    from poolkeeper.drivers.asyncpg_async import NoAnswerTimeout

    start = time.monotonic()
    try:
        await asyncio.wait_for(call(conn), patience)
    except NoAnswerTimeout:
        outcome = "guard"
    except asyncio.TimeoutError:
        outcome = "own" if time.monotonic() - start < limit else "none"
    else:
        outcome = "answered"
    return outcome, time.monotonic() - start


@pytest.mark.one_model("asyncio", "asyncpg's own no-answer guard (an asyncio-only driver)")
async def test_asyncpg_no_answer_guard_covers_the_one_statement_methods_only(
    shared_server: LocalServer,
    proxy_to: Callable[[int], FaultProxy],
    report: Report,
) -> None:
    """fetch, fetchval, fetchrow and execute with arguments (one statement each, all
    through asyncpg's ``_execute``) get the guard; a script, fetchmany, executemany,
    a caller's own timeout and a session that changed its settings do not. All at
    once, one connection each, on one silent network."""
    proxy = proxy_to(shared_server.port)
    statement_timeout = 0.2
    limit = silence_limit(statement_timeout)
    pool = AsyncPool(
        proxy.dsn, name="fault-asyncpg-guard-methods", min_size=0,
        max_size=len(_GUARD_CASES), connect_timeout=2.0,
        statement_timeout=statement_timeout, driver="asyncpg",
    )  # fmt: skip
    try:
        await pool.wait(10)
        conns = [await pool.getconn(timeout=5) for _ in _GUARD_CASES]
        await conns[0].execute(
            "DROP TYPE IF EXISTS pk_guard_mood; CREATE TYPE pk_guard_mood AS ENUM ('ok')"
        )
        for conn, (_, before, _, _) in zip(conns, _GUARD_CASES, strict=True):
            # Warm: asyncpg prepares and caches the statements, so only the run is silent.
            await conn.fetchval("SELECT 1")
            if before is not None:
                await before(conn)
        proxy.blackhole()

        results = await asyncio.gather(
            *(
                _attempt(conn, call, limit, limit + 0.8)
                for conn, (_, _, call, _) in zip(conns, _GUARD_CASES, strict=True)
            )
        )
        outcomes = {
            name: result[0] for (name, *_), result in zip(_GUARD_CASES, results, strict=True)
        }
        report["outcomes"] = outcomes
        assert outcomes == {name: kind for name, _, _, kind in _GUARD_CASES}
        for (name, _, _, kind), (_, waited) in zip(_GUARD_CASES, results, strict=True):
            if kind == "guard":
                assert limit - 0.1 < waited < limit + 0.6, name
        proxy.heal()
        for conn in conns:
            await pool.putconn(conn)
        async with pool.connection() as conn:
            await conn.execute("DROP TYPE pk_guard_mood")
    finally:
        await pool.close(timeout=1.0)
