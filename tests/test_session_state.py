"""Which statements mark a connection's session dirty: the lexer (pure; no server)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from poolkeeper import session_state
from poolkeeper.session_state import CHECK, KNOWN_VERDICTS, touches_session


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
        "CREATE GLOBAL TEMPORARY TABLE t (x int)",
        "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
        "SELECT 1 INTO TEMP t",
        "SELECT 1; SET search_path TO x",
        "LISTEN chan",
        "PREPARE s AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "DECLARE c CURSOR FOR SELECT 1",
        "DISCARD ALL",
        "DEALLOCATE ALL",
        "LOAD 'auto_explain'",
        "DO $$ BEGIN EXECUTE 'SET ROLE x'; END $$",
        "CALL p()",
        "EXECUTE s",
        b"SET work_mem = '1MB'",
        # the spellings a regular expression missed
        "/* tag */ SET ROLE reader",
        "/* a /* nested */ comment */ SET ROLE reader",
        "-- x\nSET search_path TO x",
        "CREATE TABLE pg_temp.t (x int)",
        'CREATE TABLE "pg_temp".t (x int)',
        """SELECT "set_config"('work_mem', '1MB', false)""",
        "SELECT pg_catalog.set_config('work_mem', '1MB', false)",
        "SELECT pg_advisory_lock/**/(1)",
        "SELECT pg_advisory_lock -- why not\n (1)",
        "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
        "EXPLAIN (ANALYZE, BUFFERS) SELECT set_config('a.b', 'c', false)",
        # text the lexer cannot split safely: unknown means reset
        "SELECT 'unterminated; SET ROLE x",
        "/* unterminated SET ROLE x",
        "SELECT $tag$ unterminated; SET ROLE x",
        # harmless with standard_conforming_strings on, a SET with it off
        "SELECT 'a\\' , 'b; SET ROLE x; --'",
        "SELECT U&\"\\0073et_config\"('a', 'b', false)",
        "VACUUM; SELECT 1 FROM t; FROBNICATE",
        sql.SQL("SELECT {}").format(sql.Literal(1)),
    ],
)
def test_statements_that_can_leave_session_state_are_flagged(query: object) -> None:
    assert touches_session(query) is True


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1",
        "",
        ";",
        "UPDATE accounts SET balance = 0 WHERE id = 1",
        "INSERT INTO settings (k, v) VALUES ('a', 'b')",
        "INSERT INTO public.orders (a, b) VALUES ($1, $2) RETURNING id",
        "SELECT pg_advisory_xact_lock(1)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "DELETE FROM t WHERE offset_reset = true",
        'SELECT temperature, temp, "offset" FROM weather',
        "SELECT 'SET ROLE x; DISCARD ALL' AS text",
        "SELECT $$ ; SET ROLE x $$, $q$ ' $q$",
        "SELECT E'\\' ; SET ROLE x; --'",
        "SELECT 'C:\\path'",
        "SELECT 1 /* set_config( */",
        "/* app=web */ SELECT 1;",
        "SELECT 1; SELECT 2",
        "SET LOCAL work_mem = '8MB'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN; SELECT 1; COMMIT",
        "(SELECT 1) UNION (SELECT 2)",
        "EXPLAIN SELECT 1",
        "SELECT count(*), now(), coalesce(a, 0) FROM t WHERE id IN (1, 2)",
        "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v varchar(20))",
        "SELECT * FROM generate_series(1, 3)",
        "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql AS $$ SELECT a $$",
        b"SELECT 2",
    ],
)
def test_ordinary_statements_are_not(query: object) -> None:
    assert touches_session(query) is False


@pytest.mark.parametrize(
    "query",
    [
        "SELECT my_function(1)",
        "SELECT * FROM app.report()",
        'SELECT "MixedCase"()',
        "SELECT 1; SELECT f()",
        "UPDATE t SET x = compute(x)",
        "SELECT setseed(0.5)",
    ],
)
def test_calls_to_unknown_functions_ask_for_a_settings_check(query: str) -> None:
    # Not a reset, but not clean either: the reported settings are compared on return.
    assert touches_session(query) is CHECK


def test_a_reset_outranks_a_check_in_any_order() -> None:
    assert touches_session("SELECT f(); SET ROLE x") is True
    assert touches_session("SET ROLE x; SELECT f()") is True


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


_FRAGMENTS = [
    "SELECT",
    "select",
    "SET",
    "ROLE x",
    "temp",
    "TEMP TABLE t",
    "pg_temp.t",
    "set_config",
    '"set_config"',
    "(",
    ")",
    ";",
    ",",
    "'str; SET'",
    "E'\\''",
    "$$ ; $$",
    "/* c */",
    "/* a /* b */ c */",
    "-- c\n",
    "f",
    "count",
    "INTO",
    "CREATE",
    "FROM t",
    "1",
    "explain",
    "WITH",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=12), st.sampled_from([" ", "", "\n"]))
def test_the_cheap_test_never_judges_more_leniently_than_the_lexer(
    fragments: list[str], glue: str
) -> None:
    text = glue.join(fragments)
    try:
        thorough: int = False
        for tokens in session_state._statements(text):
            verdict = session_state._statement_verdict(tokens)
            if verdict is True:
                thorough = True
                break
            thorough = thorough or verdict
    except session_state._Unlexable:
        thorough = True
    quick = session_state._judge(text)
    assert quick is thorough or (quick is True and thorough is not True), text


@pytest.mark.one_model(
    "threads",
    "psycopg's sync tracking cursor and its verdict cache across connections",
)
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
