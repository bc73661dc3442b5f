"""The psycopg2 driver: the same pool semantics with the psycopg2 connection object."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.conftest import PoolFactory

psycopg2 = pytest.importorskip("psycopg2", reason="the [psycopg2] extra is not installed")


def test_lends_psycopg2_connections_and_rolls_back_on_return(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    admin.execute("DROP TABLE IF EXISTS pk_pg2; CREATE TABLE pk_pg2 (x int)")
    pool = make_pool(min_size=1, max_size=1, driver="psycopg2")
    conn = pool.getconn()
    assert isinstance(conn, psycopg2.extensions.connection)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO pk_pg2 VALUES (1)")
    pool.putconn(conn)
    assert admin.execute("SELECT count(*) FROM pk_pg2").fetchone() == (0,)
    assert pool.stats().rollbacks == 1


def test_transaction_commits_and_session_state_is_reset(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1, driver="psycopg2")
    with pool.transaction() as conn, conn.cursor() as cur:
        cur.execute("SET search_path TO pg_catalog")
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SHOW search_path")
        row = cur.fetchone()
        assert row is not None
        assert "public" in row[0]
    assert pool.stats().resets == 1


def test_closed_by_borrower_is_replaced_and_user_cursor_factory_kept(
    make_pool: PoolFactory,
) -> None:
    from psycopg2.extras import RealDictCursor

    pool = make_pool(
        min_size=1, max_size=1, driver="psycopg2", connect_kwargs={"cursor_factory": RealDictCursor}
    )
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    with pool.connection() as again, again.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchone() == {"one": 1}
