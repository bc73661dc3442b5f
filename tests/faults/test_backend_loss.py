"""Backends killed under a warm pool, and a network that cuts or black-holes traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from poolkeeper import ConnectionFailed, Pool, PoolTimeout
from poolkeeper.embedded import LocalServer
from poolkeeper.policy import silence_limit
from tests.behaviour.kinds import (
    ALL_KINDS,
    PER_MODEL_KINDS,
    AnyPool,
    Kind,
    autocommit,
    begin,
    execute,
    fetchval,
)
from tests.faults.conftest import Report, backend_pids, terminate_all
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.fault

PoolMaker = Callable[..., Pool]
KindPools = Callable[..., AnyPool]


def _warm(pool: Pool, count: int) -> None:
    """Borrow ``count`` connections at once so that ``count`` are open and idle."""
    pool.wait(timeout=10)
    held = [pool.getconn(timeout=5) for _ in range(count)]
    for conn in held:
        conn.execute("SELECT 1")
    for conn in held:
        pool.putconn(conn)


def _borrow_many(pool: Pool, count: int) -> tuple[int, list[str]]:
    """Borrow and query ``count`` times; return (successes, errors seen by callers)."""
    ok, errors = 0, []
    for _ in range(count):
        try:
            with pool.connection(timeout=5) as conn:
                conn.execute("SELECT 1").fetchone()
            ok += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return ok, errors


async def _warm_kind(pool: AnyPool, count: int) -> None:
    """``_warm`` for a pool of any kind."""
    await pool.wait(timeout=10)
    held = [await pool.getconn(timeout=5) for _ in range(count)]
    for conn in held:
        await fetchval(conn, "SELECT 1")
    for conn in held:
        await pool.putconn(conn)


async def _borrow_many_kind(pool: AnyPool, count: int) -> tuple[int, list[str]]:
    """``_borrow_many`` for a pool of any kind."""
    ok, errors = 0, []
    for _ in range(count):
        try:
            async with pool.connection(timeout=5) as conn:
                await fetchval(conn, "SELECT 1")
            ok += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return ok, errors


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_terminate_every_backend_then_100_borrows_succeed(
    shared_server: LocalServer, kind_pools: KindPools, report: Report, kind: Kind
) -> None:
    """pg_terminate_backend on all of a warm pool: callers never see a dead connection."""
    name = f"fault-terminate-{kind.id}"
    pool = kind_pools(shared_server.dsn, name=name, min_size=4, max_size=8)
    await _warm_kind(pool, 4)
    old = backend_pids(shared_server, name)
    assert len(old) == 4
    # A warm pool whose connections sat idle a moment (longer than check_after).
    await asyncio.sleep(pool.config.check_after + 0.05)
    report["backends_terminated"] = terminate_all(shared_server, name)

    start = time.monotonic()
    ok, errors = await _borrow_many_kind(pool, 100)
    report["borrows_ok"] = ok
    report["errors_surfaced"] = len(errors)
    report["seconds_for_100_borrows"] = time.monotonic() - start
    assert errors == []
    assert ok == 100
    assert not (backend_pids(shared_server, name) & old)
    assert pool.stats().checks_failed >= 1


@pytest.mark.parametrize("kind", PER_MODEL_KINDS)
async def test_one_dead_connection_makes_every_older_idle_one_suspect(
    shared_server: LocalServer, kind_pools: KindPools, report: Report, kind: Kind
) -> None:
    """With borrow-time checks effectively off, the first failure marks all older idle
    connections suspect, so the error surfaces once, not once per dead connection."""
    name = f"fault-epoch-{kind.id}"
    pool = kind_pools(shared_server.dsn, name=name, min_size=4, max_size=8, check_after=3600)
    await _warm_kind(pool, 4)
    terminate_all(shared_server, name)

    # The one connection lent before anything was known to be wrong fails.
    ok, errors = await _borrow_many_kind(pool, 1)
    assert (ok, len(errors)) == (0, 1), errors
    # Four at once, so that the three other dead ones must come off the stack (one by
    # one, a replacement landing on top could keep them there): each is verified and
    # replaced before it is lent.
    held = [await pool.getconn(timeout=5) for _ in range(4)]
    for conn in held:
        await fetchval(conn, "SELECT 1")
    for conn in held:
        await pool.putconn(conn)
    more_ok, more_errors = await _borrow_many_kind(pool, 99)
    errors += more_errors
    report["errors_surfaced"] = len(errors)
    report["borrows_ok"] = ok + more_ok
    assert more_errors == []
    assert more_ok == 99
    assert pool.stats().checks_failed == 3


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_proxy_cut_all_connections(
    shared_server: LocalServer,
    kind_pools: KindPools,
    proxy_to: Callable[[int], FaultProxy],
    report: Report,
    kind: Kind,
) -> None:
    """Every connection reset by the network: the pool replaces them unseen by callers."""
    proxy = proxy_to(shared_server.port)
    pool = kind_pools(proxy.dsn, name=f"fault-cut-{kind.id}", min_size=4, max_size=8)
    await _warm_kind(pool, 4)
    await asyncio.sleep(pool.config.check_after + 0.05)
    proxy.cut()
    start = time.monotonic()
    ok, errors = await _borrow_many_kind(pool, 50)
    report["errors_surfaced"] = len(errors)
    report["seconds_for_50_borrows"] = time.monotonic() - start
    assert errors == []
    assert ok == 50


#: psycopg2 has no no-answer guard for a borrower's statement (docs/reliability.md, "No
#: answer ever"): only TCP could end its wait, so that kind is left out.
GUARDED_KINDS = [param for param in ALL_KINDS if param.id != "sync-psycopg2"]


@pytest.mark.parametrize("kind", GUARDED_KINDS)
async def test_proxy_black_hole_fails_within_timeouts_then_heals(
    shared_server: LocalServer,
    kind_pools: KindPools,
    proxy_to: Callable[[int], FaultProxy],
    report: Report,
    kind: Kind,
) -> None:
    """A peer that accepts but never answers: queries, checks and connects all end
    within the configured timeouts, and the pool serves again once the network heals."""
    proxy = proxy_to(shared_server.port)
    statement_timeout = 1.0
    pool = kind_pools(
        proxy.dsn,
        name=f"fault-blackhole-{kind.id}",
        min_size=2,
        max_size=4,
        connect_timeout=2.0,
        statement_timeout=statement_timeout,
    )
    await _warm_kind(pool, 2)
    proxy.blackhole()

    # 1. A query on a connection that was just in use (no borrow-time check): the
    # driver's no-answer guard ends it, after the server's own cancel had its chance.
    conn = await pool.getconn(timeout=1)
    start = time.monotonic()
    with pytest.raises(Exception, match="no answer from the server"):
        await fetchval(conn, "SELECT 1")
    query_failed_after = time.monotonic() - start
    await pool.putconn(conn)
    report["query_failed_after_s"] = query_failed_after
    assert silence_limit(statement_timeout) - 0.1 < query_failed_after
    assert query_failed_after < silence_limit(statement_timeout) + 1.5

    # 2. A borrow while black-holed: bounded by the caller's timeout, with the cause.
    start = time.monotonic()
    with pytest.raises((PoolTimeout, ConnectionFailed)):
        async with pool.connection(timeout=3) as other:
            await fetchval(other, "SELECT 1")
    borrow_failed_after = time.monotonic() - start
    report["borrow_failed_after_s"] = borrow_failed_after
    assert borrow_failed_after < 3 + 0.5 + statement_timeout * 2

    # 3. Heal: the pool serves again on its own.
    proxy.heal()
    healed_at = time.monotonic()
    while True:
        try:
            async with pool.connection(timeout=1) as again:
                await fetchval(again, "SELECT 1")
            break
        except Exception:
            assert time.monotonic() - healed_at < 10, "the pool did not serve after heal"
            await asyncio.sleep(0.02)
    report["seconds_to_serve_after_heal"] = time.monotonic() - healed_at
    _, errors = await _borrow_many_kind(pool, 20)
    report["errors_after_heal"] = len(errors)
    assert errors == []


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("left", ["in a transaction", "with session state"])
async def test_return_does_not_hang_on_a_silent_server(
    shared_server: LocalServer,
    kind_pools: KindPools,
    proxy_to: Callable[[int], FaultProxy],
    report: Report,
    *,
    left: str,
    kind: Kind,
) -> None:
    """Without statement_timeout, the pool's own ROLLBACK or DISCARD ALL on return
    waits at most connect_timeout for a server that stopped answering; the
    connection is discarded, not lent again."""
    proxy = proxy_to(shared_server.port)
    connect_timeout = 1.0
    pool = kind_pools(
        proxy.dsn,
        name=f"fault-return-{kind.id}",
        min_size=1,
        max_size=1,
        connect_timeout=connect_timeout,
    )
    await _warm_kind(pool, 1)
    conn = await pool.getconn()
    if left == "in a transaction":
        await begin(conn)  # the return must roll back
    else:
        await autocommit(conn, True)
        await execute(conn, "SET search_path = public")  # the return must reset the session
    proxy.blackhole()

    start = time.monotonic()
    # In a task or thread of its own, so that a hang fails the test instead of hanging it.
    await asyncio.wait_for(kind.spawn(pool.putconn(conn)), connect_timeout + 5)
    returned_after = time.monotonic() - start
    report["returned_after_s"] = returned_after
    assert connect_timeout - 0.1 < returned_after < connect_timeout + 0.5
    assert pool.stats().idle == 0


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_check_on_a_silent_server_takes_one_connect_timeout(
    shared_server: LocalServer,
    kind_pools: KindPools,
    proxy_to: Callable[[int], FaultProxy],
    report: Report,
    kind: Kind,
) -> None:
    """check() pings its idle connections side by side (threads for a Pool, gathered
    tasks for an AsyncPool): four that never answer cost one connect_timeout, not four,
    and all four are replaced."""
    proxy = proxy_to(shared_server.port)
    connect_timeout = 1.0
    pool = kind_pools(
        proxy.dsn,
        name=f"fault-check-{kind.id}",
        min_size=4,
        max_size=4,
        connect_timeout=connect_timeout,
    )
    await _warm_kind(pool, 4)
    proxy.blackhole()

    start = time.monotonic()
    await pool.check()
    took = time.monotonic() - start
    report["check_took_s"] = took
    assert connect_timeout - 0.1 < took < 2 * connect_timeout
    assert pool.stats().checks_failed == 4
