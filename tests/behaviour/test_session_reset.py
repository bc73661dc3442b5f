"""reset="auto" on every pool kind: session state one borrower leaves behind never
reaches the next, and a clean session costs no reset. Each state is looked up on the
server (pg_locks, pg_listening_channels(), pg_prepared_statements, …)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import (
    Kind,
    autocommit,
    backend_pid,
    begin,
    close,
    commit,
    driver_of,
    execute,
    fetchval,
    rollback,
    server_state,
    settle,
    wait_until,
)
from tests.behaviour.test_user_code import FINGERPRINT_TEXT


@pytest.fixture(scope="module")
def _reader_role(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        # Kept, never dropped: another run sharing the server may be using it.
        admin.execute(
            "DO $$ BEGIN CREATE ROLE pk_reader; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )


#: state -> (the statement that leaves it, a query on the next borrower, "clean" test)
DIRTIERS: dict[str, tuple[str, str, Any]] = {
    "role": ("SET ROLE pk_reader", "SELECT current_user", lambda v: v != "pk_reader"),
    "session_authorization": (
        "SET SESSION AUTHORIZATION pk_reader",
        "SELECT session_user",
        lambda v: v != "pk_reader",
    ),
    "search_path": (
        "SET search_path TO pg_catalog",
        "SHOW search_path",
        lambda v: "public" in v,
    ),
    "set_config": (
        "SELECT set_config('work_mem', '7MB', false)",
        "SHOW work_mem",
        lambda v: v != "7MB",
    ),
    "temp_table": (
        "CREATE TEMP TABLE pk_scratch (x int)",
        "SELECT to_regclass('pg_temp.pk_scratch') IS NULL",
        lambda v: v is True,
    ),
    "advisory_lock": (
        "SELECT pg_advisory_lock(4243)",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        lambda v: v == 0,
    ),
    "listen": (
        "LISTEN pk_channel",
        "SELECT count(*) FROM pg_listening_channels()",
        lambda v: v == 0,
    ),
    "prepared_statement": (
        "PREPARE pk_stmt AS SELECT 1",
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pk_stmt'",
        lambda v: v == 0,
    ),
}


@pytest.mark.usefixtures("_reader_role")
@pytest.mark.parametrize("state", sorted(DIRTIERS))
async def test_session_state_is_reset_before_the_next_borrower(
    make_pool: MakePool, state: str
) -> None:
    dirty, probe, is_clean = DIRTIERS[state]
    pool = make_pool(min_size=1, max_size=1)
    conn = await pool.getconn()
    pid = backend_pid(conn)
    await autocommit(conn, True)
    await execute(conn, dirty)
    await autocommit(conn, False)
    await pool.putconn(conn)
    async with pool.connection() as again:
        assert backend_pid(again) == pid  # reset, not discarded
        seen = await fetchval(again, probe)
        assert is_clean(seen), seen
        # The driver's own statement cache survived DISCARD ALL.
        assert await fetchval(again, "SELECT 1") == 1
        assert await fetchval(again, "SELECT 1") == 1
    assert pool.stats().resets == 1


async def test_return_state_is_clean_only_for_an_idle_clean_open_connection(
    make_pool: MakePool, admin: psycopg.Connection[Any]
) -> None:
    # Autocommit from the start: a borrower switching it is a client-side change, which
    # the return check reports too (tests/test_client_state.py).
    pool = make_pool(min_size=1, max_size=1, connect_kwargs={"autocommit": True})
    conn = await pool.getconn()
    drv = driver_of(pool)

    def clean() -> bool:
        return bool(drv.return_state(conn) == drv.clean_state)

    assert clean()
    await fetchval(conn, "SELECT 1")
    await fetchval(conn, "SELECT 1")  # a verdict already known
    assert clean()
    await execute(conn, "BEGIN")
    assert not clean()
    await settle(drv.rollback(conn))
    assert clean()
    for _ in range(2):  # scanned, then known: dirty both times
        await execute(conn, "SET search_path TO pg_catalog")
        assert not clean()
        await settle(drv.reset_session(conn))
        assert clean()
    pid = backend_pid(conn)
    await close(conn)
    assert not clean()
    await pool.putconn(conn)
    # Discarded, not lent again: the only slot holds a new backend. (Not the pool's
    # connections_closed: the background close may count after the replacement is idle.)
    async with pool.connection() as again:
        assert backend_pid(again) != pid
        assert server_state(admin, backend_pid(again)) is not None
    await wait_until(lambda: server_state(admin, pid) is None)


async def test_plain_queries_cost_no_reset(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1)
    for _ in range(5):
        async with pool.connection() as conn:
            await fetchval(conn, "SELECT relname FROM pg_class LIMIT 1")
            await fetchval(conn, "SELECT 1")
    assert pool.stats().resets == 0


async def test_configure_settings_survive_a_reset(make_pool: MakePool, kind: Kind) -> None:
    async def configure(conn: Any) -> None:
        await execute(conn, "SET application_name = 'configured'")
        await commit(conn)

    pool = make_pool(min_size=1, max_size=1, configure=kind.hook(configure))
    async with pool.connection() as conn:
        await execute(conn, "SET search_path TO pg_catalog")
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW application_name") == "configured"
        assert "public" in await fetchval(conn, "SHOW search_path")


async def test_reset_none_leaves_the_session_alone(make_pool: MakePool) -> None:
    pool = make_pool(min_size=1, max_size=1, reset=None)
    async with pool.connection() as conn:
        await execute(conn, "SET search_path TO pg_catalog")
        await commit(conn)
    async with pool.connection() as conn:
        assert await fetchval(conn, "SHOW search_path") == "pg_catalog"


def last_statement(admin: psycopg.Connection[Any], pid: int) -> str:
    """What backend ``pid`` ran last, as the server recorded it."""
    row = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None
    return str(row[0])


async def test_reset_always_resets_even_a_clean_session(
    make_pool: MakePool, admin: psycopg.Connection[Any]
) -> None:
    pool = make_pool(min_size=1, max_size=1, reset="always")
    async with pool.connection() as conn:
        pid = backend_pid(conn)
        assert await fetchval(conn, "SELECT 1") == 1
    assert last_statement(admin, pid) == "DISCARD ALL"
    assert pool.stats().resets == 1
    async with pool.connection() as conn:
        assert backend_pid(conn) == pid
        assert await fetchval(conn, "SELECT 2") == 2
    assert pool.stats().resets == 2


async def test_a_clean_session_is_not_reset_on_the_server(
    make_pool: MakePool, admin: psycopg.Connection[Any]
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    async with pool.connection() as conn:
        pid = backend_pid(conn)
        await autocommit(conn, True)
        assert await fetchval(conn, "SELECT 'pk-plain'") == "pk-plain"
        await autocommit(conn, False)
    assert last_statement(admin, pid) == "SELECT 'pk-plain'"
    assert pool.stats().resets == 0


@pytest.fixture(scope="module")
def _driver_tx_table(dsn: str) -> Iterator[None]:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS pk_driver_tx (borrower text)")
    yield
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS pk_driver_tx")


#: Objects a borrower leaves behind unfinished, as a generator never resumed would.
_UNFINISHED: list[Any] = []


async def _begin_in_the_driver(kind: Kind, conn: Any) -> None:
    """Start a transaction through the driver's own bookkeeping: psycopg's
    ``transaction()`` block, psycopg2's two-phase ``tpc_begin`` (psycopg2 has no
    transaction object), asyncpg's ``Transaction``."""
    if kind.driver == "psycopg":
        block = conn.transaction()
        await settle(block.__aenter__() if kind.is_async else block.__enter__())
    elif kind.driver == "psycopg2":
        block = conn.xid(1, "pk_driver_tx", "pk")
        conn.tpc_begin(block)
    else:
        block = conn.transaction()
        await block.start()
    _UNFINISHED.append(block)


async def _insert_in_a_driver_transaction(kind: Kind, conn: Any, borrower: str) -> None:
    """The next borrower's transaction, the driver's usual way."""
    insert = f"INSERT INTO pk_driver_tx VALUES ('{borrower}')"
    if kind.driver == "psycopg2":
        await execute(conn, insert)
        await commit(conn)
    elif kind.is_async:
        async with conn.transaction():
            await execute(conn, insert)
    else:
        with conn.transaction():
            await execute(conn, insert)


@pytest.mark.usefixtures("_driver_tx_table")
async def test_a_driver_transaction_ended_by_sql_reaches_no_next_borrower(
    make_pool: MakePool, kind: Kind, dsn: str, request: pytest.FixtureRequest
) -> None:
    # The borrower ends its transaction with a COMMIT sent as SQL: the server is idle,
    # but the driver still counts the transaction, so it would refuse the next
    # borrower's commit() (psycopg, psycopg2) or turn its transaction() into a
    # SAVEPOINT outside any transaction (asyncpg). Such a connection is discarded.
    pool = make_pool(min_size=1, max_size=1)
    async with pool.connection() as conn:
        fresh = await fetchval(conn, FINGERPRINT_TEXT)
    async with pool.connection() as conn:
        await _begin_in_the_driver(kind, conn)
        await execute(conn, "INSERT INTO pk_driver_tx VALUES ('A')")
        await execute(conn, "COMMIT")
    borrower = request.node.name
    async with pool.connection() as conn:
        await _insert_in_a_driver_transaction(kind, conn, borrower)
        after = await fetchval(conn, FINGERPRINT_TEXT)
        await rollback(conn)
    _UNFINISHED.clear()
    # The backend pid (the fingerprint's first field) is new: not lent, discarded.
    assert after.split(",", 1)[1] == fresh.split(",", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT count(*) FROM pk_driver_tx WHERE borrower = %s", [borrower]
        ).fetchone()
        admin.execute("DELETE FROM pk_driver_tx")
    assert rows == (1,)


async def _open_cursor_without_hold(kind: Kind, conn: Any, query: str) -> Any:
    """A server-side cursor made the driver's way, one row fetched: psycopg's and
    psycopg2's named cursors (a DECLARE), asyncpg's cursor (a protocol portal)."""
    if kind.driver == "asyncpg":
        cursor = await conn.cursor(query)
        return await cursor.fetchrow()
    cursor = conn.cursor("pk_no_hold")
    await settle(cursor.execute(query))
    _UNFINISHED.append(cursor)  # left open, as a borrower who forgets would
    return await settle(cursor.fetchone())


async def test_a_cursor_without_hold_costs_no_reset_and_reaches_no_next_borrower(
    make_pool: MakePool, kind: Kind
) -> None:
    # A cursor without WITH HOLD ends with its transaction, which the return rolls
    # back: its DECLARE is judged by its query (a table read: a settings check), not
    # as a reset. Proven on the server: the next borrower of the same backend sees no
    # cursor (pg_cursors is in the fingerprint), and no DISCARD ALL was sent.
    pool = make_pool(min_size=1, max_size=1)
    async with pool.connection() as conn:
        fresh = await fetchval(conn, FINGERPRINT_TEXT)
    async with pool.connection() as conn:
        await begin(conn)
        row = await _open_cursor_without_hold(
            kind, conn, "SELECT relname FROM pg_class ORDER BY oid LIMIT 3"
        )
        assert row is not None
    async with pool.connection() as conn:
        assert await fetchval(conn, FINGERPRINT_TEXT) == fresh
    _UNFINISHED.clear()
    assert pool.stats().resets == 0


#: what configure= makes for every borrower -> (its statement, a query that lists it on
#: the server, a borrower's statement that undoes it). Only a reset, then configure=
#: again, puts it back: the undoing statement must count as a reset, not as clean.
CONFIGURED: dict[str, tuple[str, str, str]] = {
    "listen": (
        "LISTEN pk_configured",
        "SELECT string_agg(c, ',') FROM pg_listening_channels() AS c",
        "UNLISTEN *",
    ),
    "hold_cursor": (
        "DECLARE pk_configured CURSOR WITH HOLD FOR SELECT 1",
        # Named ones: asyncpg's query runs in the unnamed portal, which pg_cursors lists.
        "SELECT string_agg(name, ',') FROM pg_cursors WHERE name <> ''",
        "close /* every cursor */\n  ALL",
    ),
}


@pytest.mark.parametrize("state", sorted(CONFIGURED))
async def test_what_a_borrower_undoes_of_configure_is_back_for_the_next_borrower(
    make_pool: MakePool, kind: Kind, state: str
) -> None:
    made, listed, undo = CONFIGURED[state]

    async def configure(conn: Any) -> None:
        await execute(conn, made)
        await commit(conn)

    pool = make_pool(min_size=1, max_size=1, configure=kind.hook(configure))
    async with pool.connection() as conn:
        pid = backend_pid(conn)
        assert await fetchval(conn, listed) == "pk_configured"
        fresh = await fetchval(conn, FINGERPRINT_TEXT)
    async with pool.connection() as conn:
        await execute(conn, undo)
        await commit(conn)
        assert await fetchval(conn, listed) is None
    async with pool.connection() as conn:
        assert backend_pid(conn) == pid
        assert await fetchval(conn, listed) == "pk_configured"
        assert await fetchval(conn, FINGERPRINT_TEXT) == fresh
    assert pool.stats().resets == 1
