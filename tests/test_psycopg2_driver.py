"""What only the psycopg2 driver has: its cursor_factory, kept on a replacement.

Lending, rollback and reset with psycopg2 run on the sync-psycopg2 kind of the
behaviour suite (tests/behaviour/)."""

from __future__ import annotations

import pytest

from tests.conftest import PoolFactory

psycopg2 = pytest.importorskip("psycopg2", reason="the [psycopg2] extra is not installed")

pytestmark = pytest.mark.one_model("threads", "psycopg2 is a sync-only driver")


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
