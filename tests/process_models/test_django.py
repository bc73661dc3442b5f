"""The Django backend (``poolkeeper.integrations.django``) under a real gunicorn.

The example project (examples/django_app) is preloaded in gunicorn's master, which
queries through Django at import and keeps its connection, then forks 4 workers. Each
worker must borrow from its own pool; one request's session changes must not reach
the next; Django's transaction APIs must behave as on the stock backend. Everything
is checked on the server: backends by ``application_name``, rows by querying.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.process_models.conftest import (
    backends_of,
    get_json,
    wait_until,
)
from tests.process_models.preloaded import preloaded_gunicorn

pytest.importorskip("gunicorn", reason="gunicorn is in the [test] extra")
pytest.importorskip("django", reason="Django is in the [django] and [test] extras")


@pytest.fixture
def table(admin: psycopg.Connection[Any]) -> Any:
    """The example model's table, unique to this test."""
    name = f"pk_django_note_{uuid.uuid4().hex[:8]}"
    admin.execute(
        sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, text text)").format(
            sql.Identifier(name)
        )
    )
    yield name
    admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


def _texts(admin: psycopg.Connection[Any], table: str) -> set[str]:
    rows = admin.execute(sql.SQL("SELECT text FROM {}").format(sql.Identifier(table))).fetchall()
    return {row[0] for row in rows}


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_preloaded_django_workers_borrow_from_their_own_pools(
    *,
    app_dsn: str,
    app_name: str,
    admin: psycopg.Connection[Any],
    table: str,
    tmp_path: Path,
    worker_class: str,
) -> None:
    with preloaded_gunicorn(
        "examples.django_app.wsgi:application",
        worker_class,
        tmp_path,
        DATABASE_URL=app_dsn,
        POOLKEEPER_DJANGO_TABLE=table,
    ) as gunicorn:
        for path, body in gunicorn.spread_requests():
            if path == "/":
                # A /dirty request earlier on this backend left nothing behind.
                assert body["search_path"] == '"$user", public', body
                assert body["timezone"] == "UTC", body
        gunicorn.assert_a_pool_per_worker(admin, app_name)

        # ATOMIC_REQUESTS: a view that raises leaves neither its row nor its callback.
        status, _ = get_json(gunicorn.port, "/fail/a")
        assert status == 500
        # Nested atomic blocks are savepoints; on_commit runs after the commit only.
        status, body = get_json(gunicorn.port, "/nested/b")
        assert (status, body) == (200, {"in_atomic": True})
        assert _texts(admin, table) == {
            "outer-b",
            "inner-kept-b",
            "callback-b-in-atomic-False",
        }

    wait_until(lambda: not backends_of(admin, app_name), 15, "every backend to close")
