"""reset="auto": session state one borrower leaves behind never reaches the next."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import PoolFactory

Conn = psycopg.Connection[Any]


def _one(conn: Conn, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(scope="module", autouse=True)
def _role(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pk_reader') "
            "THEN CREATE ROLE pk_reader; END IF; END $$"
        )


DIRTIERS: dict[str, tuple[Callable[[Conn], object], Callable[[Conn], bool]]] = {
    "role": (
        lambda c: c.execute("SET ROLE pk_reader"),
        lambda c: _one(c, "SELECT current_user") != "pk_reader",
    ),
    "session_authorization": (
        lambda c: c.execute("SET SESSION AUTHORIZATION pk_reader"),
        lambda c: _one(c, "SELECT session_user") != "pk_reader",
    ),
    "search_path": (
        lambda c: c.execute("SET search_path TO pg_catalog"),
        lambda c: "public" in _one(c, "SHOW search_path"),
    ),
    "set_config": (
        lambda c: c.execute("SELECT set_config('work_mem', '7MB', false)"),
        lambda c: _one(c, "SHOW work_mem") != "7MB",
    ),
    "temp_table": (
        lambda c: c.execute("CREATE TEMP TABLE pk_scratch (x int)"),
        lambda c: _one(c, "SELECT to_regclass('pg_temp.pk_scratch')") is None,
    ),
    "advisory_lock": (
        lambda c: c.execute("SELECT pg_advisory_lock(4242)"),
        lambda c: (
            _one(
                c,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid()",
            )
            == 0
        ),
    ),
    "listen": (
        lambda c: c.execute("LISTEN pk_channel"),
        lambda c: _one(c, "SELECT count(*) FROM pg_listening_channels()") == 0,
    ),
    "prepared_statement": (
        lambda c: c.execute("PREPARE pk_stmt AS SELECT 1"),
        lambda c: (
            _one(c, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pk_stmt'") == 0
        ),
    ),
}


@pytest.mark.parametrize("kind", sorted(DIRTIERS))
def test_session_state_is_reset_before_the_next_borrower(make_pool: PoolFactory, kind: str) -> None:
    dirty, is_clean = DIRTIERS[kind]
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    conn.autocommit = True
    dirty(conn)
    conn.autocommit = False
    pool.putconn(conn)
    with pool.connection() as again:
        assert again.info.backend_pid == pid  # reset, not discarded
        assert is_clean(again)
        again.rollback()
    assert pool.stats().resets == 1


def test_plain_queries_cost_no_reset(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1)
    for _ in range(5):
        with pool.connection() as conn:
            conn.execute("SELECT * FROM pg_class LIMIT 1").fetchall()
            conn.execute("UPDATE pg_temp_dummy SET x = 1" if False else "SELECT 1")
    assert pool.stats().resets == 0


def test_configure_settings_survive_a_reset(make_pool: PoolFactory) -> None:
    def configure(conn: Conn) -> None:
        conn.execute("SET application_name = 'configured'")
        conn.commit()

    pool = make_pool(min_size=1, max_size=1, configure=configure)
    with pool.connection() as conn:
        conn.execute("SET search_path TO pg_catalog")
    with pool.connection() as conn:
        assert _one(conn, "SHOW application_name") == "configured"
        assert "public" in _one(conn, "SHOW search_path")


def test_reset_none_leaves_the_session_alone(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1, reset=None)
    with pool.connection() as conn:
        conn.execute("SET search_path TO pg_catalog")
        conn.commit()
    with pool.connection() as conn:
        assert _one(conn, "SHOW search_path") == "pg_catalog"
