"""The Django backend (``poolkeeper.integrations.django``) under a real gunicorn.

The example project (examples/django_app) is preloaded in gunicorn's master, which
queries through Django at import and keeps its connection, then forks 4 workers. Each
worker must borrow from its own pool; one request's session changes must not reach
the next; Django's transaction APIs must behave as on the stock backend. Everything
is checked on the server: backends by ``application_name``, rows by querying.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.process_models.conftest import (
    answers,
    backends_of,
    child_env,
    free_port,
    get_json,
    python,
    running,
    wait_until,
)

pytest.importorskip("gunicorn", reason="gunicorn is in the [test] extra")
pytest.importorskip("django", reason="Django is in the [django] and [test] extras")

REQUESTS = 400


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
    port = free_port()
    pidfile = tmp_path / "master-backend"
    args = [
        python(),
        "-m",
        "gunicorn",
        "--preload",
        "--workers=4",
        f"--worker-class={worker_class}",
        f"--threads={4 if worker_class == 'gthread' else 1}",
        f"--bind=127.0.0.1:{port}",
        "--graceful-timeout=5",
        "examples.django_app.wsgi:application",
    ]
    env = child_env(
        DATABASE_URL=app_dsn,
        POOLKEEPER_DJANGO_TABLE=table,
        POOLKEEPER_EXAMPLE_WARM="1",
        POOLKEEPER_EXAMPLE_PIDFILE=str(pidfile),
    )
    log = tmp_path / "gunicorn.log"
    with running(args, env, log) as server:
        wait_until(lambda: answers(port), 20, f"gunicorn on port {port} ({log.read_text()})")
        master_backend = int(pidfile.read_text())

        paths = ["/dirty" if i % 4 == 0 else "/" for i in range(REQUESTS)]
        with ThreadPoolExecutor(8) as executor:
            results = list(executor.map(lambda path: get_json(port, path), paths))

        assert [status for status, _ in results] == [200] * REQUESTS, log.read_text()
        backends_by_worker: dict[int, set[int]] = defaultdict(set)
        for path, (_, body) in zip(paths, results, strict=True):
            backends_by_worker[body["worker"]].add(body["backend"])
            if path == "/":
                # A /dirty request earlier on this backend left nothing behind.
                assert body["search_path"] == '"$user", public', body
                assert body["timezone"] == "UTC", body
        workers = sorted(backends_by_worker)
        assert len(workers) >= 2, f"only {workers} served; expected several of 4 workers"
        assert server.pid not in workers
        every = [pid for pids in backends_by_worker.values() for pid in pids]
        assert len(every) == len(set(every)), dict(backends_by_worker)
        assert master_backend not in every
        on_server = backends_of(admin, app_name)
        assert set(every) <= on_server
        # The master's connection, inherited by every worker, is still the master's.
        assert master_backend in on_server

        # ATOMIC_REQUESTS: a view that raises leaves neither its row nor its callback.
        status, _ = get_json(port, "/fail/a")
        assert status == 500
        # Nested atomic blocks are savepoints; on_commit runs after the commit only.
        status, body = get_json(port, "/nested/b")
        assert (status, body) == (200, {"in_atomic": True})
        assert _texts(admin, table) == {
            "outer-b",
            "inner-kept-b",
            "callback-b-in-atomic-False",
        }

    wait_until(lambda: not backends_of(admin, app_name), 15, "every backend to close")
