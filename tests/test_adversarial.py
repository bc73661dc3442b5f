"""Spellings that change the session while looking harmless to the statement lexer,
proven on the server: the next borrower of the same backend (``max_size=1``) must
see the session fingerprint a fresh connection has, on every sync driver.
"""

from __future__ import annotations

from typing import Any

import pytest

from poolkeeper.session_state import touches_session
from tests.test_session_hygiene import _assert_no_leak, _sync_pool

#: Each changes state that outlives its transaction, spelled so that a lexer with a
#: plausible blind spot would call it harmless.
SNEAKY = {
    # PostgreSQL ends a "--" comment at a carriage return as well as a line feed.
    "comment-ended-by-cr": "SELECT 1 -- tag\r; SET work_mem = '7MB'",
    "leading-comment-cr": "-- tag\rSET work_mem = '7MB';\nSELECT 1",
    "leading-comment-cr-listen": "-- tag\rLISTEN pk_adv_chan;\nSELECT 1",
    # An UPDATE of pg_settings is a session-level SET.
    "update-pg-settings": "UPDATE pg_settings SET setting = '7MB' WHERE name = 'work_mem'",
    "update-pg-settings-qualified": (
        "UPDATE pg_catalog.\"pg_settings\" SET setting = '7MB' WHERE name = 'work_mem'"
    ),
}


@pytest.mark.one_model(
    "threads",
    "the sync drivers' tracking layers; every driver shares the lexer, and the asyncio "
    "drivers' layers meet every spelling in test_session_hygiene.py",
)
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize("name", sorted(SNEAKY))
def test_sneaky_spellings_leave_nothing_for_the_next_borrower(
    dsn: str, driver: str, name: str
) -> None:
    text = SNEAKY[name]
    with _sync_pool(dsn, driver) as pool:

        def run(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.execute(text)

        _assert_no_leak(pool, run)


@pytest.mark.one_model(
    "threads",
    "the sync drivers' tracking layers; every driver shares the lexer, and the asyncio "
    "drivers' layers meet every spelling in test_session_hygiene.py",
)
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize("value", ["'pg_temp'", "$$pg_temp$$", "E'pg_te\\155p'"])
def test_a_local_search_path_to_pg_temp_cannot_hide_a_temporary_table(
    dsn: str, driver: str, value: str
) -> None:
    # With pg_temp first on search_path, a plain CREATE TABLE makes a temporary table,
    # which outlives the transaction whose SET LOCAL put pg_temp there.
    with _sync_pool(dsn, driver) as pool:

        def run(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.execute(f"SET LOCAL search_path = {value}")
                cur.execute("CREATE TABLE pk_adv_hidden (a int)")

        _assert_no_leak(pool, run)


@pytest.mark.parametrize("text", sorted(SNEAKY.values()))
def test_the_lexer_calls_each_sneaky_spelling_dirty(text: str) -> None:
    assert touches_session(text) is True


@pytest.mark.one_model("threads", "psycopg2 is a sync-only driver")
def test_a_psycopg2_typecaster_registered_on_the_connection_is_not_the_next_borrowers(
    dsn: str,
) -> None:
    import psycopg2.extensions

    from poolkeeper import Pool

    evil = psycopg2.extensions.new_type((23,), "EVIL", lambda value, cursor: "EVIL")
    with Pool(dsn, min_size=1, max_size=1, driver="psycopg2", name="pk-adv-typecaster") as pool:
        with pool.connection() as conn, conn.cursor() as cur:
            psycopg2.extensions.register_type(evil, conn)
            cur.execute("SELECT 1, pg_backend_pid()::bigint")
            first = cur.fetchone()
        assert first is not None and first[0] == "EVIL"
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1, pg_backend_pid()::bigint")
            # The same server session, put back rather than replaced, and decoding as
            # it did before the first borrower.
            assert cur.fetchone() == (1, first[1])
