"""reset="auto" and statements the driver prepares: psycopg 3 prepares a statement
once it has run ``prepare_threshold`` times (and executemany prepares at once), then
sends only its name and arguments; asyncpg keeps every statement in its cache. The
same text with other arguments may change the session where it did not before, so
each run must be judged, prepared or not.

The statement calls a function that changes ``application_name`` only when its
argument is not empty; a borrower runs it harmlessly until it is prepared, the next
borrower once with an argument that changes the setting. Proven on the server: the
borrower after that, on the same backend, sees the session fingerprint a fresh one saw.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import Kind, backend_pid, commit, fetchval
from tests.test_session_hygiene import FINGERPRINT

FINGERPRINT_TEXT = f"SELECT f::text FROM ({FINGERPRINT}) AS f"
LEAKED = "pk-prep-leaked"


@pytest.fixture(scope="module")
def _set_name_function(dsn: str) -> Iterator[None]:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "CREATE OR REPLACE FUNCTION pk_prep_f(x text) RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN IF x <> '' THEN PERFORM set_config('application_name', x, false); "
            "END IF; RETURN 1; END $$"
        )
    yield
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP FUNCTION IF EXISTS pk_prep_f(text)")


def _application_name(dsn: str, pid: int) -> str:
    with psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
    assert row is not None
    return str(row[0])


Step = Callable[[Any], Awaitable[None]]


async def _leaks_nothing(pool: Any, dsn: str, harmless: Step, leaking: Step) -> None:
    """Borrow after borrow on one backend: ``harmless`` runs the statement without
    changing anything (long enough for the driver to prepare it), ``leaking`` runs it
    once more changing ``application_name``; the borrower after that must see the
    fingerprint a fresh session showed."""
    async with pool.connection() as conn:
        pid = backend_pid(conn)
        fresh = await fetchval(conn, FINGERPRINT_TEXT)
    async with pool.connection() as conn:
        await harmless(conn)
    async with pool.connection() as conn:
        await leaking(conn)
        # Asked from outside: any statement of its own would be judged on return.
        assert _application_name(dsn, pid) == LEAKED  # it ran
    async with pool.connection() as conn:
        assert backend_pid(conn) == pid, "the connection was replaced, not reset"
        assert await fetchval(conn, FINGERPRINT_TEXT) == fresh


async def _call(conn: Any, kind: Kind, arg: str) -> None:
    """``SELECT pk_prep_f(arg)`` with ``arg`` as a bound parameter: the same text every
    time, as the driver sees it."""
    if kind.driver == "asyncpg":
        await conn.fetchval("SELECT pk_prep_f($1)", arg)
    elif kind.is_async:
        await conn.execute("SELECT pk_prep_f(%s)", [arg])
    elif kind.driver == "psycopg":
        conn.execute("SELECT pk_prep_f(%s)", [arg])
    else:
        with conn.cursor() as cur:
            cur.execute("SELECT pk_prep_f(%s)", [arg])
    await commit(conn)


@pytest.mark.usefixtures("_set_name_function")
async def test_a_prepared_statement_that_changes_a_setting_reaches_no_next_borrower(
    make_pool: MakePool, kind: Kind, dsn: str
) -> None:
    async def harmless(conn: Any) -> None:
        # Past psycopg's prepare_threshold (5): from then on it runs prepared.
        for _ in range(8):
            await _call(conn, kind, "")

    async def leaking(conn: Any) -> None:
        await _call(conn, kind, LEAKED)

    await _leaks_nothing(make_pool(min_size=1, max_size=1), dsn, harmless, leaking)


QUERY = "SELECT pk_prep_f(%s)"


async def _run_psycopg(conn: Any, way: str, arg: str) -> None:
    """One run of the statement through psycopg 3, sync or asyncio, the ``way`` asked."""
    if way == "executemany":
        cur = conn.cursor()
        result = cur.executemany(QUERY, [[arg]])
    elif way == "pipeline":
        if isinstance(conn, psycopg.AsyncConnection):
            async with conn.pipeline():
                await conn.execute(QUERY, [arg])
            return
        with conn.pipeline():
            conn.execute(QUERY, [arg])
        return
    else:
        result = conn.execute(QUERY, [arg], prepare=True if way == "prepare=True" else None)
    if isinstance(conn, psycopg.AsyncConnection):
        await result


#: way -> the connection's prepare_threshold
WAYS = {"threshold 0": 0, "prepare=True": 5, "executemany": 5, "pipeline": 5}


@pytest.mark.differs(
    ["sync-psycopg2", "async-asyncpg"],
    reason="only psycopg 3 prepares these ways (docs/design.md, statement tracking)",
)
@pytest.mark.usefixtures("_set_name_function")
@pytest.mark.parametrize("way", sorted(WAYS))
async def test_every_way_psycopg_prepares_is_judged(
    make_pool: MakePool, kind: Kind, dsn: str, way: str
) -> None:
    pool = make_pool(
        min_size=1,
        max_size=1,
        connect_kwargs={"autocommit": True, "prepare_threshold": WAYS[way]},
    )

    async def harmless(conn: Any) -> None:
        for _ in range(8):
            await _run_psycopg(conn, way, "")

    async def leaking(conn: Any) -> None:
        await _run_psycopg(conn, way, LEAKED)

    await _leaks_nothing(pool, dsn, harmless, leaking)


@pytest.mark.differs(
    ["sync-psycopg", "async-psycopg", "sync-psycopg2"],
    reason="only asyncpg hands out prepared statement objects (docs/design.md, statement tracking)",
)
@pytest.mark.usefixtures("_set_name_function")
async def test_an_asyncpg_prepared_statement_run_by_a_later_borrower_is_judged(
    make_pool: MakePool, kind: Kind, dsn: str
) -> None:
    # SQLAlchemy's asyncpg dialect does this: it keeps PreparedStatement objects per
    # connection, and runs a cached one by its arguments alone.
    statements: list[Any] = []

    async def harmless(conn: Any) -> None:
        statements.append(await conn.prepare("SELECT pk_prep_f($1)"))
        await statements[0].fetchval("")

    async def leaking(conn: Any) -> None:
        # The statement prepared by the borrower before, not by this one.
        await statements[0].fetchval(LEAKED)

    await _leaks_nothing(make_pool(min_size=1, max_size=1), dsn, harmless, leaking)


@pytest.mark.differs(
    ["sync-psycopg2", "async-asyncpg"],
    reason="only psycopg 3 prepares this way (docs/design.md, statement tracking)",
)
@pytest.mark.usefixtures("_set_name_function")
async def test_a_psycopg_whose_get_prepared_changed_is_still_judged(
    make_pool: MakePool, kind: Kind, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hook replaces psycopg's one-line _get_prepared; a psycopg whose own differs
    # gets it wrapped instead, and must be as safe.
    from psycopg._cursor_base import BaseCursor

    from poolkeeper.drivers.psycopg_common import _tracked_get_prepared

    def other_get_prepared(self: Any, pgq: Any, prepare: bool | None = None) -> Any:
        manager = self._conn._prepared
        return type(manager).get(manager, pgq, prepare)

    wrapped = _tracked_get_prepared(other_get_prepared)
    assert wrapped.__name__ == "_wrapped_get_prepared"
    monkeypatch.setattr(BaseCursor, "_get_prepared", wrapped)
    await test_a_prepared_statement_that_changes_a_setting_reaches_no_next_borrower(
        make_pool, kind, dsn
    )
