"""Client-side connection attributes: what one borrower changes through the driver's
public API is put back before the next borrower gets the connection.

Every test hands the connection from borrower A to borrower B on the same backend
(``max_size=1``; the backend pid is compared) and reads what B sees, on the server
where the attribute shows there (``SHOW transaction_isolation``, a row that must not
exist, ``pg_listening_channels()``, the server's ``work_mem``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg import IsolationLevel
from psycopg.rows import dict_row

from tests import async_helpers
from tests.async_helpers import AsyncPoolFactory
from tests.conftest import PoolFactory

make_async_pool = async_helpers.make_async_pool
driver = async_helpers.driver

Admin = psycopg.Connection[Any]
SYNC_DRIVERS = ["psycopg", "psycopg2"]


def _pid(conn: Any) -> int:
    if hasattr(conn, "get_server_pid"):
        return int(conn.get_server_pid())
    if hasattr(conn, "get_backend_pid"):
        return int(conn.get_backend_pid())
    return int(conn.info.backend_pid)


def _show(conn: Any, setting: str) -> str:
    """``SHOW setting`` inside a transaction the connection's own attributes began
    (psycopg 3 or psycopg2), then rolled back so that A can change attributes again."""
    cur = conn.cursor()
    cur.execute(f"SHOW {setting}")
    row = cur.fetchone()
    cur.close()
    conn.rollback()
    return str(row[0])


def _first(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    cur.close()
    conn.rollback()
    return row


class _Loader(psycopg.adapt.Loader):
    def load(self, data: Any) -> Any:
        return "hijacked"


# name -> (change it as borrower A would, observe it as borrower B would)
Case = tuple[Callable[[Any], object], Callable[[Any], object]]

PSYCOPG_CASES: dict[str, Case] = {
    "autocommit": (lambda c: setattr(c, "autocommit", True), lambda c: c.autocommit),
    "set_autocommit": (lambda c: c.set_autocommit(True), lambda c: c.autocommit),
    "isolation_level": (
        lambda c: setattr(c, "isolation_level", IsolationLevel.SERIALIZABLE),
        lambda c: _show(c, "transaction_isolation"),
    ),
    "read_only": (
        lambda c: setattr(c, "read_only", True),
        lambda c: _show(c, "transaction_read_only"),
    ),
    "deferrable": (
        lambda c: c.set_deferrable(True),
        lambda c: _show(c, "transaction_deferrable"),
    ),
    "row_factory": (
        lambda c: setattr(c, "row_factory", dict_row),
        lambda c: _first(c, "SELECT 1 AS x"),
    ),
    "cursor_factory": (
        lambda c: setattr(c, "cursor_factory", psycopg.ClientCursor),
        lambda c: c.cursor_factory,
    ),
    "server_cursor_factory": (
        lambda c: setattr(c, "server_cursor_factory", psycopg.RawServerCursor),
        lambda c: c.server_cursor_factory,
    ),
    "prepare_threshold": (
        lambda c: setattr(c, "prepare_threshold", None),
        lambda c: c.prepare_threshold,
    ),
    "prepared_max": (lambda c: setattr(c, "prepared_max", 1), lambda c: c.prepared_max),
    "adapters_loader": (
        lambda c: c.adapters.register_loader("int4", _Loader),
        lambda c: _first(c, "SELECT 1"),
    ),
}


def _set_session(**kwargs: Any) -> Callable[[Any], None]:
    return lambda c: c.set_session(**kwargs)


def _psycopg2_cases() -> dict[str, Case]:
    from psycopg2.extensions import ISOLATION_LEVEL_SERIALIZABLE
    from psycopg2.extras import RealDictCursor

    return {
        "autocommit": (lambda c: setattr(c, "autocommit", True), lambda c: c.autocommit),
        "set_session_autocommit": (_set_session(autocommit=True), lambda c: c.autocommit),
        "isolation_level": (
            lambda c: setattr(c, "isolation_level", ISOLATION_LEVEL_SERIALIZABLE),
            lambda c: _show(c, "transaction_isolation"),
        ),
        "set_isolation_level": (
            lambda c: c.set_isolation_level(ISOLATION_LEVEL_SERIALIZABLE),
            lambda c: _show(c, "transaction_isolation"),
        ),
        "readonly": (
            lambda c: setattr(c, "readonly", True),
            lambda c: _show(c, "transaction_read_only"),
        ),
        "set_session_readonly": (
            _set_session(readonly=True),
            lambda c: _show(c, "transaction_read_only"),
        ),
        "deferrable": (
            lambda c: setattr(c, "deferrable", True),
            lambda c: _show(c, "transaction_deferrable"),
        ),
        "cursor_factory": (
            lambda c: setattr(c, "cursor_factory", RealDictCursor),
            lambda c: _first(c, "SELECT 1 AS x"),
        ),
        "notices_replaced": (lambda c: setattr(c, "notices", []), lambda c: id(c.notices)),
        "notifies_replaced": (lambda c: setattr(c, "notifies", []), lambda c: id(c.notifies)),
        "client_encoding": (
            lambda c: c.set_client_encoding("LATIN1"),
            lambda c: (c.encoding, _show(c, "client_encoding")),
        ),
    }


def _sync_cases() -> list[Any]:
    cases = [pytest.param("psycopg", name, id=f"psycopg-{name}") for name in PSYCOPG_CASES]
    try:
        names = list(_psycopg2_cases())
    except ImportError:
        return cases
    return cases + [pytest.param("psycopg2", name, id=f"psycopg2-{name}") for name in names]


def _sync_case(driver_name: str, name: str) -> Case:
    return PSYCOPG_CASES[name] if driver_name == "psycopg" else _psycopg2_cases()[name]


@pytest.mark.one_model(
    "threads",
    twin="tests/test_client_state.py::test_async_pool_next_borrower_sees_the_baseline",
)
@pytest.mark.parametrize(("driver_name", "name"), _sync_cases())
def test_pool_next_borrower_sees_the_baseline(
    make_pool: PoolFactory, driver_name: str, name: str
) -> None:
    change, observe = _sync_case(driver_name, name)
    pool = make_pool(min_size=1, max_size=1, driver=driver_name)
    with pool.connection() as a:
        pid = _pid(a)
        baseline = observe(a)
        change(a)
        assert observe(a) != baseline  # the change took, for A
    with pool.connection() as b:
        assert _pid(b) == pid
        assert observe(b) == baseline


# -- configure= sets the baseline --------------------------------------------------------


def _psycopg_configure(conn: Any) -> None:
    conn.isolation_level = IsolationLevel.SERIALIZABLE
    conn.read_only = True


def _psycopg2_configure(conn: Any) -> None:
    conn.set_session(isolation_level="SERIALIZABLE", readonly=True)
    conn.commit()


@pytest.mark.one_model(
    "threads",
    "the sync drivers' own connection attributes (psycopg Connection, psycopg2)",
)
@pytest.mark.parametrize("session_change", [False, True])
@pytest.mark.parametrize("driver_name", SYNC_DRIVERS)
def test_pool_configure_choices_are_the_baseline(
    make_pool: PoolFactory, driver_name: str, session_change: bool
) -> None:
    if driver_name == "psycopg2":
        pytest.importorskip("psycopg2")
    configure = _psycopg_configure if driver_name == "psycopg" else _psycopg2_configure
    pool = make_pool(min_size=1, max_size=1, driver=driver_name, configure=configure)
    with pool.connection() as a:
        pid = _pid(a)
        if driver_name == "psycopg":
            a.isolation_level = IsolationLevel.READ_COMMITTED
            a.read_only = False
        else:
            a.set_session(isolation_level="READ COMMITTED", readonly=False)
        assert _show(a, "transaction_isolation") == "read committed"
        if session_change:
            # The return then also resets the session and runs configure= again.
            a.cursor().execute("SET work_mem = '7MB'")
    for _ in range(2):
        with pool.connection() as b:
            assert _pid(b) == pid
            assert _show(b, "transaction_isolation") == "serializable"
            assert _show(b, "transaction_read_only") == "on"


@pytest.mark.one_model(
    "threads",
    "the sync drivers' own connection attributes (psycopg Connection, psycopg2)",
)
def test_pool_configure_runs_again_from_the_connected_state(make_pool: PoolFactory) -> None:
    heard: list[str] = []

    def configure(conn: Any) -> None:
        conn.add_notice_handler(lambda diag: heard.append(diag.message_primary))

    pool = make_pool(min_size=1, max_size=1, configure=configure)
    for _ in range(3):
        with pool.connection() as conn:
            conn.execute("SET work_mem = '7MB'")  # reset on return, configure= again
    with pool.connection() as conn:
        conn.execute("DO $$ BEGIN RAISE NOTICE 'once'; END $$")
    assert heard == ["once"]


class _Shouting(psycopg.adapt.Loader):
    def load(self, data: Any) -> Any:
        return bytes(data).decode().upper()


@pytest.mark.one_model(
    "threads",
    twin=(
        "tests/test_client_state.py::"
        "test_async_pool_adapters_a_borrower_registers_are_gone_whatever_configure_did"
    ),
)
@pytest.mark.parametrize("configure_registers", [False, True])
def test_pool_adapters_a_borrower_registers_are_gone_whatever_configure_did(
    make_pool: PoolFactory, configure_registers: bool
) -> None:
    # configure= running a query makes psycopg create the connection's adapters map;
    # registering on it makes that map the baseline. Either way A's loader must go.
    def configure(conn: Any) -> None:
        conn.execute("SELECT 1")
        conn.commit()
        if configure_registers:
            conn.adapters.register_loader("text", _Shouting)

    pool = make_pool(min_size=1, max_size=1, configure=configure)
    expected = (1, "X" if configure_registers else "x")
    with pool.connection() as a:
        pid = _pid(a)
        assert _first(a, "SELECT 1, 'x'::text") == expected
        a.adapters.register_loader("int4", _Loader)
        assert _first(a, "SELECT 1, 'x'::text")[0] == "hijacked"
    for _ in range(2):
        with pool.connection() as b:
            assert _pid(b) == pid
            assert _first(b, "SELECT 1, 'x'::text") == expected


# -- the rollback promise ---------------------------------------------------------------


@pytest.fixture
def rows_table(admin: Admin) -> str:
    admin.execute("CREATE TABLE IF NOT EXISTS pk_client_state_rows (tag text)")
    return "pk_client_state_rows"


def _count(admin: Admin, tag: str) -> int:
    row = admin.execute("SELECT count(*) FROM pk_client_state_rows WHERE tag = %s", [tag])
    return int(row.fetchone()[0])  # type: ignore[index]


@pytest.mark.one_model(
    "threads",
    twin=(
        "tests/test_client_state.py::"
        "test_async_pool_autocommit_left_on_does_not_commit_the_next_borrowers_failed_work"
    ),
)
@pytest.mark.parametrize("driver_name", SYNC_DRIVERS)
def test_pool_autocommit_left_on_does_not_commit_the_next_borrowers_failed_work(
    make_pool: PoolFactory, admin: Admin, rows_table: str, driver_name: str
) -> None:
    if driver_name == "psycopg2":
        pytest.importorskip("psycopg2")
    pool = make_pool(min_size=1, max_size=1, driver=driver_name)
    tag = uuid.uuid4().hex
    with pool.connection() as a:
        pid = _pid(a)
        a.autocommit = True
        a.cursor().execute(f"VACUUM {rows_table}")
    with pytest.raises(RuntimeError), pool.connection() as b:
        assert _pid(b) == pid
        b.cursor().execute(f"INSERT INTO {rows_table} VALUES (%s)", [tag])
        raise RuntimeError("B fails after writing")
    assert _count(admin, tag) == 0


def _autocommit_on(conn: Any) -> None:
    conn.autocommit = True


@pytest.mark.one_model(
    "threads",
    "the sync drivers' own connection attributes (psycopg Connection, psycopg2)",
)
@pytest.mark.parametrize("driver_name", SYNC_DRIVERS)
def test_pool_autocommit_baseline_survives_a_borrower_who_turned_it_off(
    make_pool: PoolFactory, admin: Admin, rows_table: str, driver_name: str
) -> None:
    if driver_name == "psycopg2":
        pytest.importorskip("psycopg2")
    pool = make_pool(min_size=1, max_size=1, driver=driver_name, configure=_autocommit_on)
    tag = uuid.uuid4().hex
    with pool.connection() as a:
        a.autocommit = False
        a.cursor().execute("SELECT 1")  # returned inside a transaction: rolled back first
    with pool.connection() as b:
        b.cursor().execute(f"INSERT INTO {rows_table} VALUES (%s)", [tag])
        # Autocommit again: the row is there without a commit, seen from elsewhere.
        assert _count(admin, tag) == 1


# -- session tracking survives a swapped cursor_factory ---------------------------------


@pytest.mark.one_model(
    "threads",
    "the sync drivers' own connection attributes (psycopg Connection, psycopg2)",
)
@pytest.mark.parametrize("driver_name", SYNC_DRIVERS)
def test_pool_swapped_cursor_factory_does_not_turn_session_tracking_off(
    make_pool: PoolFactory, driver_name: str
) -> None:
    if driver_name == "psycopg2":
        import psycopg2.extensions

        plain: Any = psycopg2.extensions.cursor
    else:
        plain = psycopg.Cursor
    pool = make_pool(min_size=1, max_size=1, driver=driver_name)
    with pool.connection() as a:
        pid = _pid(a)
        baseline = _show(a, "work_mem")
        a.cursor_factory = plain
    with pool.connection() as b:
        b.cursor().execute("SET work_mem = '7MB'")
        b.commit()
    with pool.connection() as c:
        assert _pid(c) == pid
        assert _show(c, "work_mem") == baseline


# -- handlers and what arrived for A ----------------------------------------------------


@pytest.mark.one_model(
    "threads",
    "psycopg's sync Connection handlers; the AsyncConnection's are tested below",
)
def test_pool_psycopg_notice_and_notify_handlers_do_not_hear_the_next_borrower(
    make_pool: PoolFactory,
) -> None:
    heard: list[str] = []
    pool = make_pool(min_size=1, max_size=1, connect_kwargs={"autocommit": True})
    with pool.connection() as a:
        a.add_notice_handler(lambda diag: heard.append(str(diag.message_primary)))
        a.add_notify_handler(lambda note: heard.append(note.payload))
    with pool.connection() as b:
        b.execute("DO $$ BEGIN RAISE NOTICE 'b-notice'; END $$")
        b.execute("LISTEN pk_client_state")
        b.execute("NOTIFY pk_client_state, 'b-payload'")
        b.execute("SELECT 1")
        assert [note.payload for note in b.notifies(timeout=0.5, stop_after=1)] == ["b-payload"]
    assert heard == []


@pytest.mark.one_model("threads", "psycopg's sync notifies() queue")
def test_pool_psycopg_notifications_queued_for_a_are_not_handed_to_b(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(min_size=1, max_size=1, connect_kwargs={"autocommit": True})
    with pool.connection() as a:
        a.execute("LISTEN pk_client_state_q")
        a.execute("NOTIFY pk_client_state_q, 'a-secret'")
        a.execute("SELECT 1")  # the notification is read, and queued for A
    with pool.connection() as b:
        b.execute("LISTEN pk_client_state_q")
        assert list(b.notifies(timeout=0.2, stop_after=1)) == []


@pytest.mark.one_model("threads", "psycopg2 is a sync-only driver")
def test_pool_psycopg2_notices_and_notifications_left_for_a_are_not_handed_to_b(
    make_pool: PoolFactory,
) -> None:
    pytest.importorskip("psycopg2")
    pool = make_pool(min_size=1, max_size=1, driver="psycopg2")
    with pool.connection() as a:
        a.autocommit = True
        cur = a.cursor()
        cur.execute("DO $$ BEGIN RAISE NOTICE 'a-notice'; END $$")
        cur.execute("LISTEN pk_client_state2")
        cur.execute("NOTIFY pk_client_state2, 'a-secret'")
        assert a.notices and a.notifies
        kept = a.notices
    with pool.connection() as b:
        assert (b.notices, b.notifies) == ([], [])
        b.cursor().execute("DO $$ BEGIN RAISE NOTICE 'b-notice'; END $$")
        assert "b-notice" in b.notices[0]
        assert kept is b.notices or not any("b-notice" in n for n in kept)


# -- AsyncPool: psycopg 3 and asyncpg ----------------------------------------------------

AsyncCase = tuple[Callable[[Any], Awaitable[object]], Callable[[Any], Awaitable[object]]]


async def _ashow(conn: Any, setting: str) -> str:
    cur = await conn.execute(f"SHOW {setting}")
    row = await cur.fetchone()
    await conn.rollback()
    return str(row[0])


async def _afirst(conn: Any, sql: str) -> Any:
    cur = await conn.execute(sql)
    row = await cur.fetchone()
    await conn.rollback()
    return row


async def _run(result: object) -> object:
    return result


async def _aset(conn: Any, name: str, value: object) -> None:
    setattr(conn, name, value)


ASYNC_PSYCOPG_CASES: dict[str, AsyncCase] = {
    "autocommit": (lambda c: c.set_autocommit(True), lambda c: _run(c.autocommit)),
    "isolation_level": (
        lambda c: c.set_isolation_level(IsolationLevel.SERIALIZABLE),
        lambda c: _ashow(c, "transaction_isolation"),
    ),
    "read_only": (lambda c: c.set_read_only(True), lambda c: _ashow(c, "transaction_read_only")),
    "deferrable": (
        lambda c: c.set_deferrable(True),
        lambda c: _ashow(c, "transaction_deferrable"),
    ),
    "row_factory": (
        lambda c: _aset(c, "row_factory", dict_row),
        lambda c: _afirst(c, "SELECT 1 AS x"),
    ),
    "cursor_factory": (
        lambda c: _aset(c, "cursor_factory", psycopg.AsyncClientCursor),
        lambda c: _run(c.cursor_factory),
    ),
    "prepare_threshold": (
        lambda c: _aset(c, "prepare_threshold", 0),
        lambda c: _run(c.prepare_threshold),
    ),
    "adapters_loader": (
        lambda c: _run(c.adapters.register_loader("int4", _Loader)),
        lambda c: _afirst(c, "SELECT 1"),
    ),
}


async def _asyncpg_codec(conn: Any) -> None:
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=str, decoder=lambda _text: "hijacked"
    )


ASYNCPG_CASES: dict[str, AsyncCase] = {
    "builtin_codec": (
        lambda c: c.set_builtin_type_codec("int4", schema="pg_catalog", codec_name="text"),
        lambda c: c.fetchval("SELECT 1::int4"),
    ),
    "type_codec": (_asyncpg_codec, lambda c: c.fetchval("SELECT '{}'::json")),
}


def _async_cases() -> list[Any]:
    cases = [pytest.param("psycopg", name, id=f"psycopg-{name}") for name in ASYNC_PSYCOPG_CASES]
    return cases + [pytest.param("asyncpg", name, id=f"asyncpg-{name}") for name in ASYNCPG_CASES]


@pytest.mark.one_model(
    "asyncio",
    twin="tests/test_client_state.py::test_pool_next_borrower_sees_the_baseline",
)
@pytest.mark.parametrize(("driver", "name"), _async_cases())
async def test_async_pool_next_borrower_sees_the_baseline(
    make_async_pool: AsyncPoolFactory, driver: str, name: str
) -> None:
    if driver == "asyncpg":
        pytest.importorskip("asyncpg")
    change, observe = (ASYNC_PSYCOPG_CASES if driver == "psycopg" else ASYNCPG_CASES)[name]
    pool = make_async_pool(min_size=1, max_size=1)
    async with pool.connection() as a:
        pid = _pid(a)
        baseline = await observe(a)
        await change(a)
        assert await observe(a) != baseline
    async with pool.connection() as b:
        if driver == "asyncpg":
            # A codec cannot be put back exactly: the connection was discarded.
            assert _pid(b) != pid
        else:
            assert _pid(b) == pid
        assert await observe(b) == baseline


@pytest.mark.one_model(
    "asyncio",
    twin=(
        "tests/test_client_state.py::"
        "test_pool_autocommit_left_on_does_not_commit_the_next_borrowers_failed_work"
    ),
)
@pytest.mark.parametrize("driver", ["psycopg"])
async def test_async_pool_autocommit_left_on_does_not_commit_the_next_borrowers_failed_work(
    make_async_pool: AsyncPoolFactory, admin: Admin, rows_table: str, driver: str
) -> None:
    pool = make_async_pool(min_size=1, max_size=1)
    tag = uuid.uuid4().hex
    async with pool.connection() as a:
        await a.set_autocommit(True)
        await a.execute(f"VACUUM {rows_table}")
    with pytest.raises(RuntimeError):
        async with pool.connection() as b:
            await b.execute(f"INSERT INTO {rows_table} VALUES (%s)", [tag])
            raise RuntimeError("B fails after writing")
    assert _count(admin, tag) == 0


@pytest.mark.one_model(
    "asyncio",
    "psycopg's AsyncConnection attributes, handlers and cursor factory",
)
@pytest.mark.parametrize("driver", ["psycopg"])
async def test_async_pool_psycopg_handlers_and_cursor_factory(
    make_async_pool: AsyncPoolFactory, driver: str
) -> None:
    heard: list[str] = []
    pool = make_async_pool(min_size=1, max_size=1, connect_kwargs={"autocommit": True})
    async with pool.connection() as a:
        pid = _pid(a)
        baseline = await _ashow(a, "work_mem")
        a.add_notice_handler(lambda diag: heard.append(str(diag.message_primary)))
        a.add_notify_handler(lambda note: heard.append(note.payload))
        a.cursor_factory = psycopg.AsyncCursor  # untracked: session tracking off
    async with pool.connection() as b:
        await b.execute("DO $$ BEGIN RAISE NOTICE 'b-notice'; END $$")
        await b.execute("LISTEN pk_client_state_a")
        await b.execute("NOTIFY pk_client_state_a, 'b-payload'")
        await b.execute("SET work_mem = '7MB'")
    async with pool.connection() as c:
        assert _pid(c) == pid
        assert await _ashow(c, "work_mem") == baseline
    assert heard == []


@pytest.mark.one_model(
    "asyncio",
    twin=(
        "tests/test_client_state.py::"
        "test_pool_adapters_a_borrower_registers_are_gone_whatever_configure_did"
    ),
)
@pytest.mark.parametrize("configure_registers", [False, True])
@pytest.mark.parametrize("driver", ["psycopg"])
async def test_async_pool_adapters_a_borrower_registers_are_gone_whatever_configure_did(
    make_async_pool: AsyncPoolFactory, driver: str, configure_registers: bool
) -> None:
    async def configure(conn: Any) -> None:
        await conn.execute("SELECT 1")
        await conn.commit()
        if configure_registers:
            conn.adapters.register_loader("text", _Shouting)

    pool = make_async_pool(min_size=1, max_size=1, configure=configure)
    expected = (1, "X" if configure_registers else "x")
    async with pool.connection() as a:
        pid = _pid(a)
        assert await _afirst(a, "SELECT 1, 'x'::text") == expected
        a.adapters.register_loader("int4", _Loader)
        assert (await _afirst(a, "SELECT 1, 'x'::text"))[0] == "hijacked"
    for _ in range(2):
        async with pool.connection() as b:
            assert _pid(b) == pid
            assert await _afirst(b, "SELECT 1, 'x'::text") == expected


@pytest.mark.one_model(
    "asyncio",
    "asyncpg's own listeners, loggers and codecs (an asyncio-only driver)",
)
@pytest.mark.parametrize("driver", ["asyncpg"])
async def test_async_pool_asyncpg_listeners_and_loggers_do_not_reach_the_next_borrower(
    make_async_pool: AsyncPoolFactory, admin: Admin, driver: str
) -> None:
    pytest.importorskip("asyncpg")
    heard: list[object] = []

    def hear(*args: Any) -> None:
        heard.append(args)

    pool = make_async_pool(min_size=1, max_size=1)
    async with pool.connection() as a:
        pid = _pid(a)
        a.add_query_logger(hear)
        a.add_log_listener(hear)
        a.add_termination_listener(hear)
        await a.add_listener("pk_client_state_pg", hear)
        await asyncio.sleep(0)  # asyncpg calls loggers with call_soon
        heard.clear()  # A's own LISTEN, logged for A
    async with pool.connection() as b:
        assert _pid(b) == pid
        assert await b.fetchval("SELECT $1::text", "b-secret-argument") == "b-secret-argument"
        await b.execute("DO $$ BEGIN RAISE NOTICE 'b-notice'; END $$")
        assert await b.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
        admin.execute("NOTIFY pk_client_state_pg, 'for-a'")
        await b.fetchval("SELECT 1")
        await asyncio.sleep(0.05)
    await pool.close()
    await asyncio.sleep(0.05)  # termination listeners run from the loop
    assert heard == []


@pytest.mark.one_model(
    "asyncio",
    "asyncpg's own listeners, loggers and codecs (an asyncio-only driver)",
)
@pytest.mark.parametrize("driver", ["asyncpg"])
async def test_async_pool_asyncpg_configure_listeners_and_codecs_are_the_baseline(
    make_async_pool: AsyncPoolFactory, driver: str
) -> None:
    pytest.importorskip("asyncpg")
    configured: list[str] = []
    borrowers: list[str] = []

    async def configure(conn: Any) -> None:
        conn.add_log_listener(lambda _conn, message: configured.append(message.message))
        await _asyncpg_codec(conn)

    pool = make_async_pool(min_size=1, max_size=1, configure=configure)
    async with pool.connection() as a:
        pid = _pid(a)
        a.add_log_listener(lambda _conn, message: borrowers.append(message.message))
        await a.execute("SET work_mem = '7MB'")  # reset, and configure= again
    async with pool.connection() as b:
        assert _pid(b) == pid  # configure's codec is the baseline: nothing discarded
        assert await b.fetchval("SELECT '{}'::json") == "hijacked"
        await b.execute("DO $$ BEGIN RAISE NOTICE 'b-notice'; END $$")
        await asyncio.sleep(0.05)
    assert (configured, borrowers) == (["b-notice"], [])
