"""gunicorn with ``--preload`` serving a plain WSGI app through ``Database()``.

The app module (examples/process_models/wsgi_app.py) is imported in gunicorn's master,
which uses the pool there before forking 4 workers. Each worker must build its own
pool, the master's session must survive its workers (including one that exits), and
one request's session state must not reach the next.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

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

REQUESTS = 400


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
    port = free_port()
    pidfile = tmp_path / "master-backend"
    args = [
        python(),
        "-m",
        "gunicorn",
        "--preload",
        "--workers=4",
        f"--worker-class={worker_class}",
        # More than one thread turns a sync worker into a gthread one.
        f"--threads={4 if worker_class == 'gthread' else 1}",
        f"--bind=127.0.0.1:{port}",
        "--graceful-timeout=5",
        "examples.process_models.wsgi_app:app",
    ]
    env = child_env(
        DATABASE_URL=app_dsn,
        POOLKEEPER_EXAMPLE_DRIVER=driver,
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

        statuses = [status for status, _ in results]
        assert statuses == [200] * REQUESTS
        backends_by_worker: dict[int, set[int]] = defaultdict(set)
        for path, (_, body) in zip(paths, results, strict=True):
            backends_by_worker[body["worker"]].add(body["backend"])
            if path == "/":
                # A request that changed search_path earlier on this backend left nothing.
                assert body["search_path"] == '"$user", public', body
        workers = sorted(backends_by_worker)
        assert len(workers) >= 2, f"only {workers} served; expected several of 4 workers"
        assert server.pid not in workers
        # No backend served two worker processes, and none is the master's.
        every = [pid for pids in backends_by_worker.values() for pid in pids]
        assert len(every) == len(set(every)), dict(backends_by_worker)
        assert master_backend not in every
        on_server = backends_of(admin, app_name)
        assert set(every) <= on_server
        assert master_backend in on_server

        # A worker that exits (gracefully: sys.exit, finalisers run) must not end the
        # master's session, which it inherited.
        leaving = workers[0]
        os.kill(leaving, signal.SIGTERM)
        wait_until(lambda: not _alive(leaving), 15, f"worker {leaving} to exit")
        wait_until(
            lambda: not backends_by_worker[leaving] & backends_of(admin, app_name),
            10,
            "the exited worker's backends to go",
        )
        assert master_backend in backends_of(admin, app_name)
        wait_until(lambda: answers(port), 15, "gunicorn to serve again")

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
