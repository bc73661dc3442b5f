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
        # undoes configure='s LISTEN
        "UNLISTEN *",
        "unlisten chan",
        # closes configure='s WITH HOLD cursors
        "CLOSE ALL",
        "close all;",
        "  Close/* every cursor */ALL ",
        "-- done\nCLOSE\n\tall",
        "close /* a /* nested */ comment */ All",
        "FETCH 1 FROM c; CLOSE ALL",
        "PREPARE s AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        'DECLARE "c" SCROLL CURSOR WITH HOLD FOR SELECT x FROM t',
        "EXPLAIN DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        # without HOLD, judged by its query
        "DECLARE c CURSOR FOR SELECT set_config('work_mem', '7MB', false)",
        "DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT * FROM pg_temp.t",
        "DECLARE c CURSOR FOR SET work_mem = '7MB'",
        "DECLARE c CURSOR",
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
        # Not session state, but the no-answer guard must stand aside (it exempts a
        # session flagged reset): the transaction may now rightly run past its limit.
        "SET LOCAL statement_timeout = '1h'",
        'BEGIN; set local "statement_timeout" TO 0',
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
        "select 1;",
        "SELECT 1 AS ok, 'x' AS \"Name\", NULL, TRUE, false",
        "SELECT 1,2 , 3",
        "SELECT 'it''s' AS quote",
        "SELECT 1 -- ping",
        "SELECT 1 /*traceparent='00-4bf9-00f0-01'*/",
        "/* app=web */ SELECT 1;",
        "SELECT 1; SELECT 2",
        "SELECT 'SET ROLE x; DISCARD ALL' AS text",
        "SELECT $$ ; SET ROLE x $$, $q$ ' $q$",
        "SELECT E'\\' ; SET ROLE x; --'",
        "SELECT 'temporary' AS word, 'pg_temp' AS other",
        "SELECT 1 /* set_config( */",
        "SET LOCAL work_mem = '8MB'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL IMMEDIATE",
        "BEGIN; SELECT 1; COMMIT",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "START TRANSACTION READ ONLY",
        "SAVEPOINT sa_1; RELEASE SAVEPOINT sa_1; ROLLBACK TO SAVEPOINT sa_1",
        "END; ABORT",
        "SHOW search_path",
        'DECLARE "for" CURSOR FOR SELECT 1',
        "FETCH 10 FROM c; MOVE NEXT IN c; CLOSE c",
        # a cursor named "all", or a name that starts with it
        'CLOSE "all"',
        "close all_done",
        "NOTIFY jobs, 'payload'",
        "EXPLAIN SELECT 1",
        b"SELECT 2",
    ],
)
def test_statements_that_run_no_user_code_are_clean(query: object) -> None:
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
        # a user's function named like a built-in, reached through search_path
        "SELECT lower(1)",
        "SELECT now(), coalesce(a, 0) FROM t",
        # triggers, column defaults, rules, row security policies
        "UPDATE accounts SET balance = 0 WHERE id = 1",
        "INSERT INTO settings (k, v) VALUES ('a', 'b')",
        "INSERT INTO public.orders (a, b) VALUES ($1, $2) RETURNING id",
        "INSERT INTO t DEFAULT VALUES",
        "DELETE FROM t WHERE offset_reset = true",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "COPY t FROM STDIN",
        "TRUNCATE t",
        # views, and functions a plan folds or an index expression calls
        'SELECT temperature, temp, "offset" FROM weather',
        "TABLE v",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "(SELECT 1) UNION (SELECT 2)",
        "VALUES (1)",
        "EXPLAIN SELECT * FROM v",
        "ANALYZE t",
        "VACUUM t",
        "SELECT pg_advisory_xact_lock(1)",
        # a cursor without HOLD ends with its transaction (psycopg's named cursors)
        'DECLARE "pk_c" CURSOR FOR SELECT x FROM t',
        "DECLARE c BINARY INSENSITIVE NO SCROLL CURSOR WITHOUT HOLD FOR SELECT f()",
        # operators and casts that search_path may resolve to a user's
        "SELECT 1 + 1",
        "SELECT -1",
        "SELECT 1.5",
        "SELECT 'x'::mytype",
        "SELECT CAST('x' AS mytype)",
        "SELECT date '2026-01-01'",
        "SELECT 'a' || 'b'",
        "SELECT $1",
        # event triggers run on DDL
        "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v varchar(20))",
        "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql AS $$ SELECT a $$",
        "ALTER TABLE t ADD COLUMN note text",
        "DROP TABLE t",
        "LOCK TABLE t",
        # not clean only because the quick test does not look further
        "SELECT 1 x",
    ],
)
def test_statements_that_may_run_user_code_ask_for_a_settings_check(query: str) -> None:
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
    # what a SELECT of literals is made of, and what makes one run user code
    "AS",
    'AS "x"',
    "NULL",
    "'it''s'",
    "+",
    "::t",
    "-1",
    "BEGIN",
    "SHOW x",
    "'a\\'",
    "CLOSE",
    "ALL",
]


@settings(max_examples=500, deadline=None)
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
    # Never more lenient: clean < CHECK < reset.
    order = {False: 0, CHECK: 1, True: 2}
    assert order[quick] >= order[thorough], text


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
