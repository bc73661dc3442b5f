"""Which statements mark a connection's session dirty (pure; no server)."""

from __future__ import annotations

import pytest
from psycopg import sql

from poolkeeper.session_state import KNOWN_VERDICTS, touches_session


@pytest.mark.parametrize(
    "query",
    [
        "SET search_path TO x",
        "  set role reader",
        "RESET ALL",
        "SET SESSION AUTHORIZATION bob",
        "select set_config('work_mem', '1MB', false)",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_lock_shared(1)",
        "CREATE TEMP TABLE t (x int)",
        "create temporary table t (x int)",
        "SELECT 1; SET search_path TO x",
        "LISTEN chan",
        "PREPARE s AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "DISCARD ALL",
        "LOAD 'auto_explain'",
        b"SET work_mem = '1MB'",
        sql.SQL("SELECT {}").format(sql.Literal(1)),
    ],
)
def test_statements_that_can_leave_session_state_are_flagged(query: object) -> None:
    assert touches_session(query)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1",
        "UPDATE accounts SET balance = 0 WHERE id = 1",
        "INSERT INTO settings (k, v) VALUES ('a', 'b')",
        "SELECT pg_advisory_xact_lock(1)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "DELETE FROM t WHERE offset_reset = true",
        b"SELECT 2",
    ],
)
def test_ordinary_statements_are_not(query: object) -> None:
    assert not touches_session(query)


def test_verdicts_are_remembered_per_query_text_and_stay_right() -> None:
    KNOWN_VERDICTS.clear()
    for _ in range(2):
        assert touches_session("SET role reader")
        assert not touches_session("SELECT 42")
    assert KNOWN_VERDICTS == {"SET role reader": True, "SELECT 42": False}
    # Unhashable or composed queries are never cached (and always count as dirty).
    assert touches_session(bytearray(b"SELECT 1")) is False
    assert touches_session(sql.SQL("SELECT 1"))
    assert len(KNOWN_VERDICTS) == 2


def test_the_verdict_cache_is_bounded() -> None:
    KNOWN_VERDICTS.clear()
    for i in range(10_000):
        touches_session(f"SELECT {i}")
    assert 0 < len(KNOWN_VERDICTS) <= 4096
    assert not touches_session("SELECT 9999")


def test_a_tracking_cursor_marks_a_known_query_dirty_on_every_connection(dsn: str) -> None:
    from poolkeeper import Pool

    with Pool(dsn, min_size=2, max_size=2, connect_kwargs={"autocommit": True}) as pool:
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SET search_path TO pg_catalog")
                assert conn._pk_dirty
            with pool.connection() as conn:
                assert not conn._pk_dirty
                search_path = conn.execute("SHOW search_path").fetchone()
                assert search_path is not None and "pg_catalog" not in search_path[0].split(", ")
