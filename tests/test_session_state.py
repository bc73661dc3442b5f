"""Which statements mark a connection's session dirty (pure; no server)."""

from __future__ import annotations

import pytest
from psycopg import sql

from poolkeeper.session_state import touches_session


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
