"""reset="auto", proven on the server: whatever one borrower does to its session, on
any driver and through any query path, the next borrower of the same backend sees
the session a fresh connection has.

Every test compares a *session fingerprint* (:data:`FINGERPRINT`) taken on a fresh
connection with one taken by the next borrower of the same backend (``max_size=1``;
the backend pid is part of the fingerprint); none trusts the pool's own flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.sql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from poolkeeper import AsyncPool, ConfigurationError, Pool
from poolkeeper.session_state import CHECK, touches_session

ROLE = "pk_hyg_role"

#: Everything a borrower can leave behind on the server that a fresh session lacks.
#: Prepared statements count only when made with SQL PREPARE: the drivers' own
#: protocol-level statement caches are theirs to manage.
FINGERPRINT = """
SELECT pg_backend_pid(),
  current_user::text,
  session_user::text,
  (SELECT coalesce(json_agg(json_build_array(name, setting) ORDER BY name), '[]')
     FROM pg_settings WHERE source IN ('session', 'client'))::text,
  (SELECT coalesce(json_agg(c.relname ORDER BY c.relname), '[]')
     FROM pg_class c WHERE c.relpersistence = 't' AND c.relnamespace = pg_my_temp_schema())::text,
  (SELECT coalesce(json_agg(ch ORDER BY ch), '[]') FROM pg_listening_channels() ch)::text,
  (SELECT coalesce(json_agg(json_build_array(l.classid, l.objid, l.objsubid, l.mode)
                            ORDER BY l.classid, l.objid, l.objsubid, l.mode), '[]')
     FROM pg_locks l WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid())::text,
  (SELECT coalesce(json_agg(p.name ORDER BY p.name), '[]')
     FROM pg_prepared_statements p WHERE p.from_sql)::text,
  (SELECT coalesce(json_agg(c.name ORDER BY c.name), '[]')
     FROM pg_cursors c WHERE c.name <> '')::text
"""
# asyncpg numbers its parameters itself; the fingerprint has none.
FINGERPRINT_ASYNCPG = FINGERPRINT


@pytest.fixture(scope="module")
def server_objects(dsn: str) -> Iterator[None]:
    """A role to SET ROLE to, a procedure and a SECURITY DEFINER function that change
    settings, and a table for harmless statements; all but the role dropped afterwards."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        # Roles belong to the whole cluster: another run on the same server may be making
        # or using this one now (the rest lives in the run's own database, tests/conftest.py).
        admin.execute(
            f"DO $$ BEGIN CREATE ROLE {ROLE}; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
        admin.execute(
            "CREATE OR REPLACE PROCEDURE pk_hyg_proc() LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM set_config('search_path', 'pg_catalog', false); END $$"
        )
        admin.execute(
            "CREATE OR REPLACE FUNCTION pk_hyg_set_tz() RETURNS int LANGUAGE plpgsql "
            "SECURITY DEFINER AS "
            "$$ BEGIN PERFORM set_config('TimeZone', 'America/Chicago', false); RETURN 1; END $$"
        )
        admin.execute(
            'CREATE TABLE IF NOT EXISTS pk_hyg_weather (temperature int, "offset" int, note text)'
        )
        # A trigger: server-side code that an INSERT runs without naming it.
        admin.execute("CREATE TABLE IF NOT EXISTS pk_hyg_trig (x int)")
        # A type asyncpg has no codec for until it introspects it.
        admin.execute("DROP TYPE IF EXISTS pk_hyg_mood")
        admin.execute("CREATE TYPE pk_hyg_mood AS ENUM ('sad', 'ok')")
        admin.execute(
            "CREATE OR REPLACE FUNCTION pk_hyg_trig_fn() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM set_config('TimeZone', 'America/Chicago', false); RETURN NEW; "
            "END $$"
        )
        admin.execute(
            "CREATE OR REPLACE TRIGGER pk_hyg_trig_set BEFORE INSERT ON pk_hyg_trig "
            "FOR EACH ROW EXECUTE FUNCTION pk_hyg_trig_fn()"
        )
    yield
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS pk_hyg_weather")
        admin.execute("DROP TABLE IF EXISTS pk_hyg_trig")
        admin.execute("DROP TYPE IF EXISTS pk_hyg_mood")
        admin.execute("DROP FUNCTION IF EXISTS pk_hyg_trig_fn()")
        admin.execute("DROP FUNCTION IF EXISTS pk_hyg_set_tz()")
        admin.execute("DROP PROCEDURE IF EXISTS pk_hyg_proc()")


def test_the_fingerprint_itself_costs_no_reset() -> None:
    # It reads catalog views, so a settings check (which finds nothing) at most.
    assert touches_session(FINGERPRINT) is not True


# -- the second net: settings the server reports, compared on a slow-path return --------


@pytest.mark.one_model(
    "threads",
    twin=(
        "tests/test_session_hygiene.py::"
        "test_asyncpg_reported_setting_changed_unseen_is_caught_on_a_slow_path_return"
    ),
)
@pytest.mark.usefixtures("server_objects")
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_reported_setting_changed_unseen_is_caught_on_a_slow_path_return(
    dsn: str, driver: str
) -> None:
    # The INSERT asks only for a settings check; its trigger changes TimeZone and the
    # change is committed. The borrower then leaves a transaction open, so the return
    # takes the slow path (a rollback), which compares the reported settings too.
    with _sync_pool(dsn, driver) as pool:

        def insert_then_leave_a_transaction_open(conn: Any) -> None:
            cur = conn.cursor()
            cur.execute("INSERT INTO pk_hyg_trig VALUES (1)")
            conn.commit()
            cur.execute("SELECT 1")

        assert touches_session("INSERT INTO pk_hyg_trig VALUES (1)") is CHECK
        with pool.connection() as conn:
            fresh = _fingerprint(conn)
        with pool.connection() as conn:
            insert_then_leave_a_transaction_open(conn)
        with pool.connection() as conn:
            assert _fingerprint(conn) == fresh


@pytest.mark.one_model(
    "asyncio",
    twin=(
        "tests/test_session_hygiene.py::"
        "test_a_reported_setting_changed_unseen_is_caught_on_a_slow_path_return"
    ),
)
@pytest.mark.usefixtures("server_objects")
async def test_asyncpg_reported_setting_changed_unseen_is_caught_on_a_slow_path_return(
    dsn: str,
) -> None:
    async with _async_pool(dsn, "asyncpg") as pool:
        async with pool.connection() as conn:
            fresh = await _afingerprint(conn)
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO pk_hyg_trig VALUES (1)")
            await conn.transaction().start()  # left open: the return rolls it back
        async with pool.connection() as conn:
            assert await _afingerprint(conn) == fresh


@pytest.mark.one_model("asyncio", "how the asyncpg driver reads asyncpg's own settings store")
@pytest.mark.usefixtures("server_objects")
@pytest.mark.parametrize("found", [True, False], ids=["asyncpg's dict", "name by name"])
async def test_asyncpg_reads_the_reported_settings_either_way(
    dsn: str, monkeypatch: pytest.MonkeyPatch, found: bool
) -> None:
    # From asyncpg's own dict of reported settings when it can be found, else one
    # attribute at a time: either way the trigger's TimeZone is seen on a return that
    # takes no slow path.
    from poolkeeper.drivers import asyncpg_async

    if not found:
        monkeypatch.setattr(asyncpg_async, "_live_settings", lambda conn: None)
    async with _async_pool(dsn, "asyncpg") as pool:
        async with pool.connection() as conn:
            assert (type(conn._pk_settings) is dict) is found
            fresh = await _afingerprint(conn)
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO pk_hyg_trig VALUES (1)")
        async with pool.connection() as conn:
            assert await _afingerprint(conn) == fresh


# -- sync drivers ----------------------------------------------------------------------

Action = Callable[[Any], object]


def _fingerprint(conn: Any) -> tuple[Any, ...]:
    if isinstance(conn, psycopg.Connection):
        row = conn.execute(FINGERPRINT).fetchone()
        conn.commit()
    else:
        with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
            cur.execute(FINGERPRINT)
            row = cur.fetchone()
        conn.commit()
    assert row is not None
    return tuple(row)


def _sync_pool(dsn: str, driver: str) -> Pool:
    return Pool(dsn, driver=driver, min_size=1, max_size=1, timeout=10.0, name="pk-hygiene")


def _assert_no_leak(pool: Pool, action: Action) -> None:
    with pool.connection() as conn:
        fresh = _fingerprint(conn)
    with pool.connection() as conn:
        action(conn)
        conn.commit()  # whatever the borrower did outlives its transaction
    with pool.connection() as conn:
        after = _fingerprint(conn)
    assert after[0] == fresh[0], "the connection was replaced, not reset"
    assert after == fresh


def _psycopg_named_cursor(conn: psycopg.Connection[Any]) -> None:
    cur = conn.cursor("pk_hyg_cur", withhold=True)
    cur.execute("SELECT generate_series(1, 3)")
    assert cur.fetchone() == (1,)
    _KEEP.append(cur)  # not closed, as a borrower who forgets would leave it


def _psycopg_copy(conn: psycopg.Connection[Any]) -> None:
    with (
        conn.cursor() as cur,
        cur.copy("COPY (SELECT set_config('work_mem', '7MB', false)) TO STDOUT") as copy,
    ):
        for _ in copy:
            pass


def _psycopg_pipeline(conn: psycopg.Connection[Any]) -> None:
    with conn.pipeline():
        conn.execute("SET search_path TO pg_catalog")


def _psycopg_swapped_factory(conn: psycopg.Connection[Any]) -> None:
    factory = conn.cursor_factory
    conn.cursor_factory = psycopg.ClientCursor
    try:
        conn.execute(f"SET ROLE {ROLE}")
    finally:
        conn.cursor_factory = factory


_KEEP: list[Any] = []

PSYCOPG_LEAKS: dict[str, Action] = {
    "leading block comment": lambda c: c.execute(f"/* tag */ SET ROLE {ROLE}"),
    "leading line comment": lambda c: c.execute("-- x\nSET search_path TO pg_catalog"),
    "pg_temp table": lambda c: c.execute("CREATE TABLE pg_temp.pk_hyg_t (x int)"),
    "quoted set_config": lambda c: c.execute("""SELECT "set_config"('work_mem', '7MB', false)"""),
    "comment before (": lambda c: c.execute("SELECT pg_advisory_lock/**/(4243)"),
    "DO EXECUTE SET": lambda c: c.execute(
        "DO $$ BEGIN EXECUTE 'SET search_path TO pg_catalog'; END $$"
    ),
    "CALL": lambda c: c.execute("CALL pk_hyg_proc()"),
    "ClientCursor": lambda c: psycopg.ClientCursor(c).execute(f"SET ROLE {ROLE}"),
    "RawCursor": lambda c: psycopg.RawCursor(c).execute(
        "SELECT set_config('work_mem', $1, false)", ["7MB"]
    ),
    "stream": lambda c: list(c.cursor().stream("SELECT set_config('work_mem', '7MB', false)")),
    "named cursor WITH HOLD": _psycopg_named_cursor,
    "executemany": lambda c: c.cursor().executemany(
        "SELECT set_config('work_mem', %s, false)", [("7MB",)]
    ),
    "copy": _psycopg_copy,
    "prepare=True": lambda c: c.execute("SELECT pg_advisory_lock(%s)", [4244], prepare=True),
    "pipeline": _psycopg_pipeline,
    "sql.Composed": lambda c: c.execute(
        sql.SQL("SET search_path TO {}").format(sql.Identifier("pg_catalog"))
    ),
    "cursor_factory swapped": _psycopg_swapped_factory,
    "LISTEN": lambda c: c.execute("LISTEN pk_hyg_chan"),
    "PREPARE": lambda c: c.execute("PREPARE pk_hyg_stmt AS SELECT 1"),
    "SET SESSION AUTHORIZATION": lambda c: c.execute(f"SET SESSION AUTHORIZATION {ROLE}"),
    "SECURITY DEFINER function sets TimeZone": lambda c: c.execute("SELECT pk_hyg_set_tz()"),
}


@pytest.mark.one_model(
    "threads",
    "each path of psycopg's sync API (PSYCOPG_LEAKS); the asyncio drivers' paths are ASYNC_LEAKS",
)
@pytest.mark.usefixtures("server_objects")
@pytest.mark.parametrize("path", sorted(PSYCOPG_LEAKS))
def test_psycopg_leaves_nothing_for_the_next_borrower(dsn: str, path: str) -> None:
    with _sync_pool(dsn, "psycopg") as pool:
        _assert_no_leak(pool, PSYCOPG_LEAKS[path])
    _KEEP.clear()


@pytest.mark.one_model(
    "threads", "psycopg's two-phase API is one in both; the async twin shares its tracking"
)
def test_psycopg_two_phase_transaction_reaches_no_next_borrower(dsn: str) -> None:
    # tpc_begin() keeps the xid on the connection until a tpc_* method ends the
    # transaction; with it, psycopg refuses commit() and rollback(). Prepared (or
    # refused: max_prepared_transactions = 0), the session is idle again, the xid not.
    with _sync_pool(dsn, "psycopg") as pool:
        with pool.connection() as conn:
            fresh = _fingerprint(conn)
        with pool.connection() as conn:
            conn.tpc_begin(conn.xid(1, "pk_hyg_tpc", "pk"))
            conn.execute("SELECT 1")
            with contextlib.suppress(psycopg.errors.NotSupportedError):
                conn.tpc_prepare()
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            conn.commit()
            after = _fingerprint(conn)
    with psycopg.connect(dsn, autocommit=True) as admin:
        prepared = admin.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE '%pk_hyg_tpc%'"
        ).fetchall()
        for (gid,) in prepared:
            admin.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    # The backend pid aside (the connection is discarded, not lent), as fresh.
    assert after[1:] == fresh[1:]


@pytest.mark.one_model(
    "threads", "psycopg's pipeline() is one in both; the async twin shares its return check"
)
@pytest.mark.parametrize("autocommit", [False, True])
def test_psycopg_pipeline_left_entered_reaches_no_next_borrower(dsn: str, autocommit: bool) -> None:
    # Left entered (a generator never resumed, say) and synced, the pipeline leaves
    # the session idle (in autocommit) or in a transaction the return rolls back,
    # but the connection in pipeline mode, where stream() is refused.
    # Autocommit from connect, not set by the borrower (a client-side change of its
    # own): the return is otherwise as clean as can be.
    with Pool(
        dsn, driver="psycopg", min_size=1, max_size=1, connect_kwargs={"autocommit": autocommit}
    ) as pool:
        with pool.connection() as conn:
            fresh = _fingerprint(conn)
        with pool.connection() as conn:
            block = conn.pipeline()
            pipeline = block.__enter__()
            _KEEP.append(block)
            conn.execute("SELECT 1")
            pipeline.sync()
        with pool.connection() as conn:
            assert list(conn.cursor().stream("SELECT 1")) == [(1,)]
            after = _fingerprint(conn)
    _KEEP.clear()
    # The backend pid aside (the connection is discarded, not lent), as fresh.
    assert after[1:] == fresh[1:]


@pytest.mark.one_model("threads", "psycopg2's own reset(), a sync-only driver")
def test_psycopg2_reset_does_not_take_configures_settings_from_the_next_borrower(
    dsn: str,
) -> None:
    def configure(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SET work_mem = '7MB'")
        conn.commit()

    with Pool(dsn, driver="psycopg2", min_size=1, max_size=1, configure=configure) as pool:
        with pool.connection() as conn:
            fresh = _fingerprint(conn)
        with pool.connection() as conn:
            conn.reset()  # RESET ALL and SET SESSION AUTHORIZATION DEFAULT, in C
        with pool.connection() as conn:
            after = _fingerprint(conn)
    assert after[0] == fresh[0], "the connection was replaced, not reset"
    assert after == fresh


class _UserCursor(psycopg2.extensions.cursor):
    def execute(self, query: Any, vars: Any = None) -> Any:
        return super().execute(query, vars)


def _psycopg2_factory_attribute(conn: Any) -> None:
    factory = conn.cursor_factory
    conn.cursor_factory = psycopg2.extras.RealDictCursor
    try:
        conn.cursor().execute("LISTEN pk_hyg_chan")
    finally:
        conn.cursor_factory = factory


def _psycopg2_named_cursor(conn: Any) -> None:
    cur = conn.cursor("pk_hyg_cur", withhold=True)
    cur.execute("SELECT generate_series(1, 3)")
    assert cur.fetchone() == (1,)
    _KEEP.append(cur)


PSYCOPG2_LEAKS: dict[str, Action] = {
    "RealDictCursor": lambda c: c.cursor(cursor_factory=psycopg2.extras.RealDictCursor).execute(
        f"SET ROLE {ROLE}"
    ),
    "NamedTupleCursor": lambda c: c.cursor(cursor_factory=psycopg2.extras.NamedTupleCursor).execute(
        "SET search_path TO pg_catalog"
    ),
    "DictCursor": lambda c: c.cursor(cursor_factory=psycopg2.extras.DictCursor).execute(
        "SELECT set_config('work_mem', '7MB', false)"
    ),
    "user cursor subclass": lambda c: c.cursor(cursor_factory=_UserCursor).execute(
        "SELECT pg_advisory_lock(4245)"
    ),
    "cursor_factory attribute": _psycopg2_factory_attribute,
    "callproc set_config": lambda c: c.cursor().callproc("set_config", ["work_mem", "7MB", False]),
    "callproc advisory lock": lambda c: c.cursor().callproc("pg_advisory_lock", [4246]),
    "copy_expert": lambda c: c.cursor().copy_expert(
        "COPY (SELECT set_config('work_mem', '7MB', false)) TO STDOUT", io.StringIO()
    ),
    "named cursor WITH HOLD": _psycopg2_named_cursor,
    "leading block comment": lambda c: c.cursor().execute(f"/* tag */ SET ROLE {ROLE}"),
    "leading line comment": lambda c: c.cursor().execute("-- x\nSET search_path TO pg_catalog"),
    "pg_temp table": lambda c: c.cursor().execute("CREATE TABLE pg_temp.pk_hyg_t (x int)"),
    "quoted set_config": lambda c: c.cursor().execute(
        """SELECT "set_config"('work_mem', '7MB', false)"""
    ),
    "comment before (": lambda c: c.cursor().execute("SELECT pg_advisory_lock/**/(4243)"),
    "DO EXECUTE SET": lambda c: c.cursor().execute(
        "DO $$ BEGIN EXECUTE 'SET search_path TO pg_catalog'; END $$"
    ),
    "CALL": lambda c: c.cursor().execute("CALL pk_hyg_proc()"),
    "executemany": lambda c: c.cursor().executemany(
        "SELECT set_config('work_mem', %s, false)", [("7MB",)]
    ),
    "psycopg2.sql": lambda c: c.cursor().execute(
        psycopg2.sql.SQL("SET search_path TO {}").format(psycopg2.sql.Identifier("pg_catalog"))
    ),
    "SECURITY DEFINER function sets TimeZone": lambda c: c.cursor().execute(
        "SELECT pk_hyg_set_tz()"
    ),
}


@pytest.mark.one_model("threads", "psycopg2 is a sync-only driver")
@pytest.mark.usefixtures("server_objects")
@pytest.mark.parametrize("path", sorted(PSYCOPG2_LEAKS))
def test_psycopg2_leaves_nothing_for_the_next_borrower(dsn: str, path: str) -> None:
    with _sync_pool(dsn, "psycopg2") as pool:
        _assert_no_leak(pool, PSYCOPG2_LEAKS[path])
    _KEEP.clear()


# -- asyncio drivers -------------------------------------------------------------------

AsyncAction = Callable[[Any], Awaitable[object]]


async def _afingerprint(conn: Any) -> tuple[Any, ...]:
    if isinstance(conn, psycopg.AsyncConnection):
        cur = await conn.execute(FINGERPRINT)
        row = await cur.fetchone()
        await conn.commit()
    else:
        row = await conn.fetchrow(FINGERPRINT_ASYNCPG)
    assert row is not None
    return tuple(row)


async def _afinish(conn: Any) -> None:
    if isinstance(conn, psycopg.AsyncConnection):
        await conn.commit()


async def _assert_no_leak_async(pool: AsyncPool, action: AsyncAction) -> None:
    async with pool.connection() as conn:
        fresh = await _afingerprint(conn)
    async with pool.connection() as conn:
        await action(conn)
        await _afinish(conn)
    async with pool.connection() as conn:
        after = await _afingerprint(conn)
    assert after[0] == fresh[0], "the connection was replaced, not reset"
    assert after == fresh


def _async_pool(dsn: str, driver: str) -> AsyncPool:
    return AsyncPool(dsn, driver=driver, min_size=1, max_size=1, timeout=10.0, name="pk-hyg")


async def _aexec(conn: Any, query: str) -> None:
    await conn.execute(query)


async def _apsycopg_stream(conn: psycopg.AsyncConnection[Any]) -> None:
    async for _ in conn.cursor().stream("SELECT set_config('work_mem', '7MB', false)"):
        pass


async def _apsycopg_named(conn: psycopg.AsyncConnection[Any]) -> None:
    cur = conn.cursor("pk_hyg_cur", withhold=True)
    await cur.execute("SELECT generate_series(1, 3)")
    assert await cur.fetchone() == (1,)
    _KEEP.append(cur)


async def _apsycopg_copy(conn: psycopg.AsyncConnection[Any]) -> None:
    cur = conn.cursor()
    async with cur.copy("COPY (SELECT set_config('work_mem', '7MB', false)) TO STDOUT") as copy:
        async for _ in copy:
            pass


async def _apsycopg_pipeline(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.pipeline():
        await conn.execute("SET search_path TO pg_catalog")


ASYNC_PSYCOPG_LEAKS: dict[str, AsyncAction] = {
    "leading block comment": lambda c: _aexec(c, f"/* tag */ SET ROLE {ROLE}"),
    "leading line comment": lambda c: _aexec(c, "-- x\nSET search_path TO pg_catalog"),
    "pg_temp table": lambda c: _aexec(c, "CREATE TABLE pg_temp.pk_hyg_t (x int)"),
    "quoted set_config": lambda c: _aexec(c, """SELECT "set_config"('work_mem', '7MB', false)"""),
    "comment before (": lambda c: _aexec(c, "SELECT pg_advisory_lock/**/(4243)"),
    "DO EXECUTE SET": lambda c: _aexec(
        c, "DO $$ BEGIN EXECUTE 'SET search_path TO pg_catalog'; END $$"
    ),
    "CALL": lambda c: _aexec(c, "CALL pk_hyg_proc()"),
    "AsyncClientCursor": lambda c: psycopg.AsyncClientCursor(c).execute(f"SET ROLE {ROLE}"),
    "AsyncRawCursor": lambda c: psycopg.AsyncRawCursor(c).execute(
        "SELECT set_config('work_mem', $1, false)", ["7MB"]
    ),
    "stream": _apsycopg_stream,
    "named cursor WITH HOLD": _apsycopg_named,
    "executemany": lambda c: c.cursor().executemany(
        "SELECT set_config('work_mem', %s, false)", [("7MB",)]
    ),
    "copy": _apsycopg_copy,
    "prepare=True": lambda c: c.execute("SELECT pg_advisory_lock(%s)", [4244], prepare=True),
    "pipeline": _apsycopg_pipeline,
    "sql.Composed": lambda c: c.execute(
        sql.SQL("SET search_path TO {}").format(sql.Identifier("pg_catalog"))
    ),
    "LISTEN": lambda c: _aexec(c, "LISTEN pk_hyg_chan"),
    "SECURITY DEFINER function sets TimeZone": lambda c: _aexec(c, "SELECT pk_hyg_set_tz()"),
}


async def _asyncpg_copy_from_query(conn: Any) -> None:
    await conn.copy_from_query("SELECT set_config('work_mem', '7MB', false)", output=io.BytesIO())


async def _asyncpg_prepare(conn: Any) -> None:
    statement = await conn.prepare("SELECT pg_advisory_lock(4247)")
    await statement.fetchval()


async def _asyncpg_cursor(conn: Any) -> None:
    async with conn.transaction():
        async for _ in conn.cursor("SELECT set_config('work_mem', '7MB', false)"):
            pass


ASYNCPG_LEAKS: dict[str, AsyncAction] = {
    "copy_from_query": _asyncpg_copy_from_query,
    "execute, leading block comment": lambda c: c.execute(f"/* tag */ SET ROLE {ROLE}"),
    "execute, leading line comment": lambda c: c.execute("-- x\nSET search_path TO pg_catalog"),
    "execute, pg_temp table": lambda c: c.execute("CREATE TABLE pg_temp.pk_hyg_t (x int)"),
    "fetch, quoted set_config": lambda c: c.fetch(
        """SELECT "set_config"('work_mem', '7MB', false)"""
    ),
    "fetchval, comment before (": lambda c: c.fetchval("SELECT pg_advisory_lock/**/(4243)"),
    "fetchrow, DO EXECUTE SET": lambda c: c.fetchrow(
        "DO $$ BEGIN EXECUTE 'SET search_path TO pg_catalog'; END $$"
    ),
    "execute, CALL": lambda c: c.execute("CALL pk_hyg_proc()"),
    "fetchmany": lambda c: c.fetchmany("SELECT set_config($1, $2, false)", [("work_mem", "7MB")]),
    "executemany": lambda c: c.executemany(
        "SELECT set_config($1, $2, false)", [("work_mem", "7MB")]
    ),
    "prepare": _asyncpg_prepare,
    "cursor": _asyncpg_cursor,
    "execute with arguments": lambda c: c.execute(
        "SELECT set_config($1, $2, false)", "work_mem", "7MB"
    ),
    "LISTEN": lambda c: c.execute("LISTEN pk_hyg_chan"),
    "PREPARE": lambda c: c.execute("PREPARE pk_hyg_stmt AS SELECT 1"),
    "SECURITY DEFINER function sets TimeZone": lambda c: c.fetchval("SELECT pk_hyg_set_tz()"),
    # asyncpg's own type introspection runs set_config('jit', ..., false), twice.
    "a type asyncpg introspects": lambda c: c.fetchval("SELECT $1::pk_hyg_mood", "ok"),
}

ASYNC_LEAKS = [("psycopg", name) for name in sorted(ASYNC_PSYCOPG_LEAKS)] + [
    ("asyncpg", name) for name in sorted(ASYNCPG_LEAKS)
]


@pytest.mark.one_model(
    "asyncio",
    "each path of the asyncio drivers' APIs (ASYNC_LEAKS); the sync drivers' are above",
)
@pytest.mark.usefixtures("server_objects")
@pytest.mark.parametrize(("driver", "path"), ASYNC_LEAKS)
async def test_async_drivers_leave_nothing_for_the_next_borrower(
    dsn: str, driver: str, path: str
) -> None:
    action = (ASYNC_PSYCOPG_LEAKS if driver == "psycopg" else ASYNCPG_LEAKS)[path]
    async with _async_pool(dsn, driver) as pool:
        await _assert_no_leak_async(pool, action)
    _KEEP.clear()


@pytest.mark.one_model("asyncio", "asyncpg's own type introspection (an asyncio-only driver)")
@pytest.mark.usefixtures("server_objects")
async def test_asyncpg_introspection_cut_short_leaves_its_jit_to_no_one(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    # asyncpg turns jit off for its catalog query and back on after it. A caller's
    # timeout that runs out in that query (held here by a lock on a catalog it
    # reads) leaves the session with jit off; the borrower goes on using it.
    async with _async_pool(dsn, "asyncpg") as pool:
        async with pool.connection() as conn:
            fresh = await _afingerprint(conn)
        async with pool.connection() as conn:
            with admin.transaction():
                admin.execute("LOCK TABLE pg_catalog.pg_range IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(asyncio.TimeoutError):
                    await conn.fetchval("SELECT $1::pk_hyg_mood", "ok", timeout=0.5)
            assert await conn.fetchval("SHOW jit") == "off"
        async with pool.connection() as conn:
            assert await _afingerprint(conn) == fresh


# -- property-based: any spelling, any path --------------------------------------------

#: Statements that change what the fingerprint shows, as tokens; NAME marks a function
#: name (may be quoted or schema-qualified), KW a keyword (random case).
_CHANGES: list[list[str]] = [
    ["KW:SET", "KW:ROLE", ROLE],
    ["KW:SET", "KW:search_path", "KW:TO", "pg_catalog"],
    ["KW:SET", "KW:work_mem", "=", "'7MB'"],
    ["KW:SET", "KW:SESSION", "KW:AUTHORIZATION", ROLE],
    ["KW:SELECT", "NAME:set_config", "(", "'work_mem'", ",", "'7MB'", ",", "KW:false", ")"],
    ["KW:SELECT", "NAME:pg_advisory_lock", "(", "4250", ")"],
    ["KW:SELECT", "NAME:pg_try_advisory_lock_shared", "(", "4251", ")"],
    ["KW:CREATE", "KW:TEMP", "KW:TABLE", "pk_hyg_x", "(", "a", "KW:int", ")"],
    ["KW:CREATE", "KW:TEMPORARY", "KW:TABLE", "pk_hyg_x", "(", "a", "KW:int", ")"],
    ["KW:CREATE", "KW:TABLE", "pg_temp.pk_hyg_y", "(", "a", "KW:int", ")"],
    ["KW:SELECT", "1", "KW:INTO", "KW:TEMP", "pk_hyg_z"],
    ["KW:LISTEN", "pk_hyg_chan"],
    ["KW:PREPARE", "pk_hyg_s", "KW:AS", "KW:SELECT", "1"],
    ["KW:DO", "$$BEGIN PERFORM set_config('work_mem', '7MB', false); END$$"],
    ["KW:CALL", "NAME:pk_hyg_proc", "(", ")"],
    ["KW:SELECT", "NAME:pk_hyg_set_tz", "(", ")"],
    ["KW:DECLARE", "pk_hyg_c", "KW:CURSOR", "KW:WITH", "KW:HOLD", "KW:FOR", "KW:SELECT", "1"],
]

_COMMENTS = ["/* tag */", "/* a /* nested */ b */", "/**/", "-- c\n", "/* set role x; */"]


@st.composite
def _rendered(draw: st.DrawFn) -> str:
    tokens = draw(st.sampled_from(_CHANGES))
    parts: list[str] = []
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(_COMMENTS)) + draw(st.sampled_from(["", " ", "\n"])))
    for index, token in enumerate(tokens):
        if index:
            glue = draw(st.sampled_from([" ", "  ", "\n", "\t", *_COMMENTS]))
            if token in "(),=" or tokens[index - 1] in "(,=":
                glue = draw(st.sampled_from(["", " ", "/**/", glue]))
            parts.append(glue)
        kind, _, text = token.partition(":") if ":" in token[:5] else ("", "", token)
        if kind == "KW":
            parts.append("".join(draw(st.sampled_from([c.lower(), c.upper()])) for c in text))
        elif kind == "NAME":
            name = f'"{text}"' if draw(st.booleans()) else text
            schema = "public" if text.startswith("pk_") else "pg_catalog"
            parts.append(f"{schema}.{name}" if draw(st.booleans()) else name)
        else:
            parts.append(text)
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([";", " ;", "; ", " -- end"])))
    return "".join(parts)


def _quiet(call: Callable[[], object]) -> None:
    """Run a borrower's statement; the driver may reject the path (stream() of a SET,
    a multi-statement prepared query) after the server ran it, which is the point."""
    with contextlib.suppress(psycopg.Error, psycopg2.Error):
        call()


def _psycopg_paths(conn: Any, text: str) -> dict[str, Callable[[], object]]:
    return {
        "conn.execute": lambda: conn.execute(text),
        "Cursor": lambda: conn.cursor().execute(text),
        "ClientCursor": lambda: psycopg.ClientCursor(conn).execute(text),
        "RawCursor": lambda: psycopg.RawCursor(conn).execute(text),
        "stream": lambda: list(conn.cursor().stream(text)),
        "executemany": lambda: conn.cursor().executemany(text, [()]),
        "prepare": lambda: conn.execute(text, prepare=True),
        "copy": lambda: conn.cursor().copy(text).__enter__(),
    }


def _psycopg2_paths(conn: Any, text: str) -> dict[str, Callable[[], object]]:
    def factory(cls: Any) -> Callable[[], object]:
        return lambda: conn.cursor(cursor_factory=cls).execute(text)

    return {
        "cursor": factory(psycopg2.extensions.cursor),
        "RealDictCursor": factory(psycopg2.extras.RealDictCursor),
        "NamedTupleCursor": factory(psycopg2.extras.NamedTupleCursor),
        "DictCursor": factory(psycopg2.extras.DictCursor),
        "user subclass": factory(_UserCursor),
        "executemany": lambda: conn.cursor().executemany(text, [()]),
        "copy_expert": lambda: conn.cursor().copy_expert(text, io.StringIO()),
    }


_SYNC_PATHS = {
    "psycopg": list(_psycopg_paths(None, "")),
    "psycopg2": list(_psycopg2_paths(None, "")),
}
_PROPERTY = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.one_model(
    "threads",
    twin="tests/test_session_hygiene.py::test_any_spelling_through_any_async_path_leaves_nothing",
)
@pytest.mark.usefixtures("server_objects")
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_any_spelling_through_any_sync_path_leaves_nothing(dsn: str, driver: str) -> None:
    with _sync_pool(dsn, driver) as pool:
        with pool.connection() as conn:
            fresh = _fingerprint(conn)

        @_PROPERTY
        @given(text=_rendered(), path=st.sampled_from(_SYNC_PATHS[driver]))
        def borrower_leaves_nothing(text: str, path: str) -> None:
            with pool.connection() as conn:
                conn.autocommit = True  # so that nothing is undone by a rollback
                try:
                    paths = (_psycopg_paths if driver == "psycopg" else _psycopg2_paths)(conn, text)
                    _quiet(paths[path])
                finally:
                    if not conn.closed:
                        conn.autocommit = False
            with pool.connection() as conn:
                assert _fingerprint(conn)[1:] == fresh[1:], text

        borrower_leaves_nothing()


async def _aquiet(call: Callable[[], Awaitable[object]]) -> None:
    # asyncpg's and psycopg's errors alike: the server ran the statement.
    with contextlib.suppress(Exception):
        await call()


def _apsycopg_paths(conn: Any, text: str) -> dict[str, Callable[[], Awaitable[object]]]:
    async def stream() -> None:
        async for _ in conn.cursor().stream(text):
            pass

    async def copy() -> None:
        await conn.cursor().copy(text).__aenter__()

    return {
        "conn.execute": lambda: conn.execute(text),
        "AsyncCursor": lambda: conn.cursor().execute(text),
        "AsyncClientCursor": lambda: psycopg.AsyncClientCursor(conn).execute(text),
        "AsyncRawCursor": lambda: psycopg.AsyncRawCursor(conn).execute(text),
        "stream": stream,
        "executemany": lambda: conn.cursor().executemany(text, [()]),
        "prepare": lambda: conn.execute(text, prepare=True),
        "copy": copy,
    }


def _asyncpg_paths(conn: Any, text: str) -> dict[str, Callable[[], Awaitable[object]]]:
    async def cursor() -> None:
        async with conn.transaction():
            async for _ in conn.cursor(text):
                pass

    async def prepared() -> None:
        await (await conn.prepare(text)).fetch()

    return {
        "execute": lambda: conn.execute(text),
        "fetch": lambda: conn.fetch(text),
        "fetchval": lambda: conn.fetchval(text),
        "fetchrow": lambda: conn.fetchrow(text),
        "fetchmany": lambda: conn.fetchmany(text, [()]),
        "executemany": lambda: conn.executemany(text, [()]),
        "prepare": prepared,
        "cursor": cursor,
        "copy_from_query": lambda: conn.copy_from_query(text, output=io.BytesIO()),
    }


_ASYNC_PATHS = {
    "psycopg": list(_apsycopg_paths(None, "")),
    "asyncpg": list(_asyncpg_paths(None, "")),
}


@pytest.mark.one_model(
    "asyncio",
    twin="tests/test_session_hygiene.py::test_any_spelling_through_any_sync_path_leaves_nothing",
)
@pytest.mark.usefixtures("server_objects")
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_any_spelling_through_any_async_path_leaves_nothing(dsn: str, driver: str) -> None:
    loop = asyncio.new_event_loop()
    pool = _async_pool(dsn, driver)

    async def fingerprint() -> tuple[Any, ...]:
        async with pool.connection() as conn:
            return await _afingerprint(conn)

    async def borrow(text: str, path: str) -> None:
        async with pool.connection() as conn:
            if driver == "psycopg":
                await conn.set_autocommit(True)
            try:
                paths = (_apsycopg_paths if driver == "psycopg" else _asyncpg_paths)(conn, text)
                await _aquiet(paths[path])
            finally:
                if driver == "psycopg" and not conn.closed:
                    await conn.set_autocommit(False)

    try:
        loop.run_until_complete(pool.open())
        fresh = loop.run_until_complete(fingerprint())

        @_PROPERTY
        @given(text=_rendered(), path=st.sampled_from(_ASYNC_PATHS[driver]))
        def borrower_leaves_nothing(text: str, path: str) -> None:
            loop.run_until_complete(borrow(text, path))
            assert loop.run_until_complete(fingerprint())[1:] == fresh[1:], text

        borrower_leaves_nothing()
    finally:
        loop.run_until_complete(pool.close())
        loop.close()


# -- harmless statements: how often a reset is paid for nothing -------------------------

HARMLESS = [
    "SELECT 1",
    "SELECT temperature, \"offset\" FROM pk_hyg_weather WHERE note = 'set role x'",
    "/* app=web, route=/weather */ SELECT temperature FROM pk_hyg_weather",
    "-- read\nSELECT count(*) FROM pk_hyg_weather",
    "SELECT * FROM pk_hyg_weather WHERE note LIKE '%SET search_path%' OFFSET 1",
    "INSERT INTO pk_hyg_weather (temperature, \"offset\", note) VALUES (1, 2, 'reset all')",
    'UPDATE pk_hyg_weather SET temperature = temperature + 1 WHERE "offset" = 2',
    "DELETE FROM pk_hyg_weather WHERE note = 'listen; discard all'",
    "WITH t AS (SELECT 1 AS temp) SELECT temp FROM t",
    "SELECT $$ SET ROLE x; $$ AS quoted",
    "SELECT E'it''s \\' ; set role x' AS escaped",
    "SELECT now(), lower('TEMP'), coalesce(NULL, 1)",
    "SELECT 1 AS settings_count /* set_config( */",
    "SELECT pg_advisory_xact_lock(77)",
    "SET LOCAL work_mem = '8MB'",
    "SHOW search_path",
    "SELECT temperature FROM pk_hyg_weather ORDER BY 1 LIMIT 5;",
    "SELECT 'temporary' AS word, 'pg_temp' AS other",
    "EXPLAIN SELECT * FROM pk_hyg_weather",
    "SELECT 1; SELECT 2",
]


#: What ORMs and drivers send (Django, SQLAlchemy, asyncpg's introspection), judged by
#: the lexer only: the tables need not exist.
ORM_STATEMENTS = [
    'SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" '
    'WHERE "auth_user"."id" = %s LIMIT 21',
    'INSERT INTO "app_item" ("name", "created") VALUES (%s, %s) RETURNING "app_item"."id"',
    'UPDATE "app_item" SET "name" = %s WHERE "app_item"."id" = %s',
    'DELETE FROM "django_session" WHERE "django_session"."expire_date" < %s',
    "SELECT users.id AS users_id, users.name AS users_name FROM users "
    "WHERE users.name = %(name_1)s",
    "INSERT INTO users (name, fullname) VALUES (%(name)s, %(fullname)s) RETURNING users.id",
    "SAVEPOINT sa_savepoint_1",
    "RELEASE SAVEPOINT sa_savepoint_1",
    "ROLLBACK TO SAVEPOINT sa_savepoint_1",
    "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "select pg_catalog.version()",
    "select current_schema()",
    "show standard_conforming_strings",
    "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid "
    "WHERE typname = 'hstore'",
    "SELECT count(*) AS count_1 FROM (SELECT orders.id AS orders_id FROM orders "
    "WHERE orders.total > $1::NUMERIC(10, 2)) AS anon_1",
    "SELECT o.id FROM orders o WHERE o.created_at > now() - interval '1 day' FOR UPDATE "
    "SKIP LOCKED",
    "INSERT INTO events (payload) VALUES ($1) ON CONFLICT (id) DO UPDATE SET payload = "
    "EXCLUDED.payload",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_orders_total ON orders (total)",
    "ALTER TABLE orders ADD COLUMN note varchar(200)",
    "COPY orders (id, total) FROM STDIN WITH (FORMAT csv)",
]


@pytest.mark.one_model(
    "threads",
    "counts the lexer's verdicts (shared by every driver) once, through one pool",
)
@pytest.mark.usefixtures("server_objects")
def test_harmless_statements_rarely_cost_a_reset(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    resets = [q for q in HARMLESS if touches_session(q) is True]
    checks = [q for q in HARMLESS if touches_session(q) is CHECK]
    with _sync_pool(dsn, "psycopg") as pool:
        for query in HARMLESS:
            with pool.connection() as conn:
                conn.execute(query)
        # The settings checks found nothing changed: no reset but the lexer's.
        assert pool.stats().resets == len(resets)
    orm_resets = [q for q in ORM_STATEMENTS if touches_session(q) is True]
    orm_checks = [q for q in ORM_STATEMENTS if touches_session(q) is CHECK]
    with capsys.disabled():
        print(
            f"\nharmless statements: {len(resets)}/{len(HARMLESS)} needless resets, "
            f"{len(checks)} settings checks; ORM statements: {len(orm_resets)}/"
            f"{len(ORM_STATEMENTS)} needless resets, {len(orm_checks)} settings checks"
        )
    assert resets == [] and orm_resets == []


@pytest.mark.one_model(
    "threads",
    "psycopg's sync Connection's prepared-statement cache after DISCARD ALL",
)
def test_psycopg_prepared_statements_survive_repeated_resets(dsn: str) -> None:
    # psycopg prepares a statement run often enough; each reset's DISCARD ALL drops it
    # on the server, and the pool must make psycopg forget it every time (psycopg
    # itself notices a DISCARD ALL only while the statement is new to its cache: not
    # after a first reset that found nothing prepared). In autocommit, where no
    # ROLLBACK makes psycopg forget them anyway.
    pool = Pool(dsn, min_size=1, max_size=1, timeout=10.0, connect_kwargs={"autocommit": True})
    with pool:
        for runs in (0, 6, 6):
            with pool.connection() as conn:
                for _ in range(runs):
                    conn.execute("SELECT 1").fetchone()
                conn.execute("SET search_path TO pg_catalog")
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


# -- every query path is covered, and a new one in a driver upgrade fails here ----------


def _subclasses(cls: type[Any]) -> Iterator[type[Any]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_psycopg_cursor_class_sends_through_a_tracked_layer() -> None:
    from psycopg._cursor_base import BaseCursor

    import poolkeeper.drivers.psycopg_sync  # noqa: F401  (what a pool's driver imports)

    classes: list[Any] = [BaseCursor, *_subclasses(BaseCursor)]
    assert psycopg.ClientCursor in classes and psycopg.AsyncRawServerCursor in classes
    # A statement goes out as text (_execute_send) or by the name psycopg prepared it
    # under, which only a tracked _get_prepared hands out; the client-side cursors'
    # own _get_prepared never prepares.
    never_prepares = psycopg.client_cursor.ClientCursorMixin._get_prepared
    for cls in classes:
        assert getattr(cls._execute_send, "_pk_tracks", False), cls
        assert cls._get_prepared is never_prepares or getattr(
            cls._get_prepared, "_pk_tracks", False
        ), cls


#: asyncpg.Connection's public methods that send no SQL of the caller's, or only
#: through methods that are tracked (add_listener runs LISTEN through fetch).
# (The add_/remove_ listener and logger methods and the type codec methods are
# overridden too, for the client-side state a return puts back: tests/test_client_state.py.)
_ASYNCPG_NO_CALLER_SQL = {
    *("close", "get_reset_query", "get_server_pid", "get_server_version", "get_settings"),
    *("is_closed", "is_in_transaction", "query_logger", "reload_schema_state"),
    *("reset", "terminate", "transaction"),
    # COPY … TO STDOUT of a table and columns asyncpg quotes itself
    "copy_from_table",
}


def test_every_asyncpg_query_method_is_tracked() -> None:
    import asyncpg

    from poolkeeper.drivers.asyncpg_async import PoolAsyncpgConnection

    public = {
        name
        for name in dir(asyncpg.Connection)
        if not name.startswith("_") and callable(getattr(asyncpg.Connection, name))
    }
    tracked = public & set(vars(PoolAsyncpgConnection))
    # fetch, fetchval and fetchrow run through _execute, which is judged itself.
    assert "_execute" in vars(PoolAsyncpgConnection)
    through_execute = {
        name
        for name in public - tracked
        if "_execute" in getattr(asyncpg.Connection, name).__code__.co_names
    }
    assert through_execute == {"fetch", "fetchval", "fetchrow"}
    assert public - tracked - through_execute == _ASYNCPG_NO_CALLER_SQL
    # A PreparedStatement runs later by arguments alone: every public method of it
    # passes the (tracked) validity check first.
    statement: Any = asyncpg.prepared_stmt.PreparedStatement
    assert getattr(statement._check_conn_validity, "_pk_tracks", False)
    for name in dir(statement):
        method = getattr(statement, name)
        if not name.startswith("_") and callable(method):
            # asyncpg's connresource.guarded wrapper calls it.
            assert "_check_conn_validity" in method.__code__.co_names, name


async def _bypass(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
    return await self._Connection__execute(query, args, 0, None)


async def _reshaped(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("name", "replacement"),
    [
        # fetch & co. are judged only in _execute: a version of asyncpg whose method
        # no longer calls it would run the borrower's SQL unjudged.
        *((method, _bypass) for method in ("fetch", "fetchval", "fetchrow", "execute")),
        # _execute itself with another shape.
        ("_execute", _reshaped),
        # Its introspection changes the session's jit where _introspect_types sees it.
        ("_introspect_types", None),
    ],
)
def test_an_asyncpg_whose_query_internals_moved_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, replacement: Any
) -> None:
    # poolkeeper judges asyncpg's queries in its private _execute: an asyncpg whose
    # internals moved must be refused loudly, never run with those queries unjudged.
    import asyncpg

    from poolkeeper.drivers import asyncpg_async

    asyncpg_async._check_layout()  # the real one passes
    if replacement is None:
        monkeypatch.delattr(asyncpg.Connection, name)
    else:
        monkeypatch.setattr(asyncpg.Connection, name, replacement)
    with pytest.raises(ConfigurationError, match=r"^driver: asyncpg .*pip install"):
        asyncpg_async._check_layout()


def test_every_psycopg2_cursor_method_that_sends_sql_is_tracked() -> None:
    from poolkeeper.drivers.psycopg2_sync import _TracksSession

    public = {
        name
        for name in dir(psycopg2.extensions.cursor)
        if not name.startswith("_") and callable(getattr(psycopg2.extensions.cursor, name))
    }
    no_sql = {"cast", "close", "fetchall", "fetchmany", "fetchone", "mogrify", "nextset"}
    no_sql |= {"scroll", "setinputsizes", "setoutputsize"}  # a named cursor's MOVE/FETCH
    assert public - set(vars(_TracksSession)) == no_sql


def test_an_asyncpg_whose_prepared_statements_are_not_checked_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A prepared statement's runs are judged in its validity check: an asyncpg without
    # it must be refused, never run them unjudged.
    import asyncpg

    from poolkeeper.drivers import asyncpg_async

    statement: Any = asyncpg.prepared_stmt.PreparedStatement
    monkeypatch.delattr(statement, "_check_conn_validity")
    with pytest.raises(ConfigurationError, match=r"^driver: asyncpg .*pip install"):
        asyncpg_async.track_prepared_statements()
