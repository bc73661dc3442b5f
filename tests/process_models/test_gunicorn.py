"""gunicorn with ``--preload`` serving a plain WSGI app through ``Database()``.

The app module (examples/process_models/wsgi_app.py) is imported in gunicorn's master,
which uses the pool there before forking 4 workers. Each worker must build its own
pool, the master's session must survive its workers (including one that exits), and
one request's session state must not reach the next.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.process_models.conftest import (
    answers,
    backends_of,
    wait_until,
)
from tests.process_models.preloaded import preloaded_gunicorn

pytest.importorskip("gunicorn", reason="gunicorn is in the [test] extra")


@pytest.mark.parametrize(
    "worker_class_and_driver", [("sync", "psycopg"), ("gthread", "psycopg"), ("sync", "psycopg2")]
)
def test_preloaded_workers_each_get_their_own_pool(
    app_dsn: str,
    app_name: str,
    admin: psycopg.Connection[Any],
    tmp_path: Path,
    worker_class_and_driver: tuple[str, str],
) -> None:
    worker_class, driver = worker_class_and_driver
    with preloaded_gunicorn(
        "examples.process_models.wsgi_app:app",
        worker_class,
        tmp_path,
        DATABASE_URL=app_dsn,
        POOLKEEPER_EXAMPLE_DRIVER=driver,
    ) as gunicorn:
        for path, body in gunicorn.spread_requests():
            if path == "/":
                # A request that changed search_path earlier on this backend left nothing.
                assert body["search_path"] == '"$user", public', body
        gunicorn.assert_a_pool_per_worker(admin, app_name)
        backends_by_worker = gunicorn.backends_by_worker

        # A worker that exits (gracefully: sys.exit, finalisers run) must not end the
        # master's session, which it inherited.
        leaving = sorted(backends_by_worker)[0]
        os.kill(leaving, signal.SIGTERM)
        wait_until(lambda: not _alive(leaving), 15, f"worker {leaving} to exit")
        wait_until(
            lambda: not backends_by_worker[leaving] & backends_of(admin, app_name),
            10,
            "the exited worker's backends to go",
        )
        assert gunicorn.master_backend in backends_of(admin, app_name)
        wait_until(lambda: answers(gunicorn.port), 15, "gunicorn to serve again")

    # gunicorn stopped (SIGTERM to the whole group): every backend of the app goes.
    wait_until(lambda: not backends_of(admin, app_name), 15, "every backend to close")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (its parent has not reaped it yet) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False
