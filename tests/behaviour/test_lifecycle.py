"""Opening, waiting for, connecting and closing a pool, on every pool kind."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from poolkeeper import ConnectionFailed, PoolClosed, PoolError, PoolTimeout
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import (
    Kind,
    close,
    fetchval,
    is_closed,
    rollback,
    sqlstate,
    wait_until,
)
from tests.conftest import backends

Admin = psycopg.Connection[Any]
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.per_model("close()'s books and deadlines; closing a connection is covered below")
async def test_close_waits_for_borrowed_connections_then_closes_them(
    make_pool: MakePool, kind: Kind
) -> None:
    pool = make_pool(min_size=2, max_size=2)
    conn = await pool.getconn()
    other = await pool.getconn()
    waiter = kind.spawn(pool.getconn(timeout=10))
    await wait_until(lambda: pool.stats().waiting == 1)

    async def give_back_later() -> None:
        await asyncio.sleep(0.2)
        await pool.putconn(other)

    returner = kind.spawn(give_back_later())
    start = time.monotonic()
    await pool.close(timeout=0.6)
    elapsed = time.monotonic() - start
    with pytest.raises(PoolClosed):
        await waiter
    await returner
    assert 0.55 <= elapsed < 2.0  # `conn` was never returned: close waited out its deadline
    assert is_closed(conn)
    assert is_closed(other)
    assert pool.stats().size == 0
    with pytest.raises(PoolClosed):
        await pool.getconn()
    await pool.putconn(conn)  # closed under its borrower: returning it is harmless
    assert pool.stats().size == 0


async def test_wait_times_out_when_min_size_cannot_be_reached(make_pool: MakePool) -> None:
    pool = make_pool(UNREACHABLE, min_size=1, connect_timeout=1, fail_fast_after=None)
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match="min_size") as info:
        await pool.wait(timeout=0.5)
    assert time.monotonic() - start < 1.5
    assert "last error" in str(info.value)
    assert "opened 0 of its min_size=1 within" in str(info.value)
    assert info.value.__cause__ is not None


async def test_wait_keeps_trying_until_its_timeout_while_the_server_is_unreachable(
    make_pool: MakePool,
) -> None:
    """wait() is the call that waits: no failing fast once the breaker is open
    (tests/test_parity.py shows it returning once the server is back); at its
    deadline it says why, with the cause."""
    pool = make_pool(UNREACHABLE, min_size=2, fail_fast_after=0.2)
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"min_size=2.*; last error: ") as info:
        await pool.wait(timeout=0.6)
    assert time.monotonic() - start >= 0.6
    assert info.value.__cause__ is not None


@pytest.mark.per_model("the breaker's and the queue's verdicts; refused connects are above")
async def test_an_unreachable_server_fails_callers_within_their_timeout(
    make_pool: MakePool,
) -> None:
    pool = make_pool(UNREACHABLE, min_size=0, connect_timeout=1)
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises((PoolTimeout, ConnectionFailed)):
            await pool.getconn(timeout=1.0)
        assert time.monotonic() - start < 1.5
    assert pool.stats().connect_errors >= 1
    assert pool.health()["status"] in ("down", "degraded")


async def test_open_false_waits_for_open(make_pool: MakePool, kind: Kind) -> None:
    pool = make_pool(open=False, min_size=1)
    hint = r"await pool\.open\(\)" if kind.is_async else r"call pool\.open\(\)"
    with pytest.raises(PoolClosed, match=hint):
        await pool.getconn()
    await pool.open()
    await pool.wait(5)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SELECT 1") == 1
    await pool.close()
    with pytest.raises(PoolClosed, match="closed"):
        await pool.open()


async def test_a_with_block_opens_and_closes(make_pool: MakePool, admin: Admin) -> None:
    pool: Any = make_pool(open=False, min_size=1)
    async with pool:
        await pool.wait(5)
        assert len(backends(admin, pool.name)) == 1
    assert pool.closed
    await wait_until(lambda: not backends(admin, pool.name))


async def test_application_name_defaults_to_the_pool_name(
    make_pool: MakePool, kind: Kind, dsn: str, admin: Admin
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    await pool.wait(5)
    assert len(backends(admin, pool.name)) == 1
    sep = "&" if "?" in dsn else "?"
    mine = f"mine-{kind.id}"
    await make_pool(dsn + f"{sep}application_name={mine}", min_size=1, name=mine + "-pool").wait(5)
    assert len(backends(admin, mine)) == 1


async def test_a_key_value_conninfo_works_on_every_driver(
    make_pool: MakePool, kind: Kind, dsn: str, admin: Admin
) -> None:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["application_name"] = f"pk-kv-{kind.id}"
    params["options"] = "-c work_mem=7MB"
    pool = make_pool(make_conninfo("", **params), min_size=1, max_size=1)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW work_mem") == "7MB"
    assert len(backends(admin, f"pk-kv-{kind.id}")) == 1


async def test_statement_timeouts_reach_the_server(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1, statement_timeout=1.5, idle_in_transaction_timeout=4)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW statement_timeout") == "1500ms"
        assert await fetchval(conn, "SHOW idle_in_transaction_session_timeout") == "4s"


async def test_without_statement_timeout_the_servers_default_stands(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW statement_timeout") == "0"


async def test_a_statement_past_statement_timeout_is_cancelled_by_the_server(
    make_pool: MakePool,
) -> None:
    """A client-side guard against a silent server never pre-empts the server's own
    cancellation: the borrower gets SQLSTATE 57014 and keeps a working connection."""
    pool = make_pool(min_size=1, max_size=1, statement_timeout=0.3)
    async with pool.connection() as conn:
        with pytest.raises(Exception, match="statement timeout") as caught:
            await fetchval(conn, "SELECT pg_sleep(2)")
        assert sqlstate(caught.value) == "57014", repr(caught.value)
        await rollback(conn)
        assert await fetchval(conn, "SELECT 1") == 1


async def test_password_never_appears_in_errors_logs_or_repr(
    make_pool: MakePool, dsn: str, pk_logs: pytest.LogCaptureFixture
) -> None:
    secret = "pk-behaviour-s3cret-pw"
    params = conninfo_to_dict(dsn)
    bad = make_conninfo("", **{**params, "password": secret, "port": "1", "connect_timeout": "1"})
    pool = make_pool(bad, min_size=1)
    with pytest.raises(PoolError) as info:
        await pool.wait(timeout=1.0)
    texts = [repr(pool), str(pool), str(info.value), repr(pool.config)]
    texts += [str(pool.stats().last_error), str(info.value.__cause__)]
    texts += [r.getMessage() for r in pk_logs.records]
    assert all(secret not in t for t in texts)
    assert pool.stats().connect_errors >= 1


@pytest.mark.per_model("the lent map's books after close(); no driver call differs")
async def test_after_close_only_a_connection_closed_under_its_borrower_is_taken_back(
    make_pool: MakePool, kind: Kind, dsn: str
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    await pool.close(timeout=0)  # closes `conn` under its borrower
    assert is_closed(conn)
    await pool.putconn(conn)  # the borrower's late return: harmless
    with pytest.raises(PoolError, match="did not lend"):
        await pool.putconn(conn)  # twice is still a mistake
    stranger = await kind.connect(dsn)
    try:
        with pytest.raises(PoolError, match="did not lend"):
            await pool.putconn(stranger)
    finally:
        await close(stranger)
