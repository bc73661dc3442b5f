"""gunicorn ``--preload`` with 4 workers, the scenario the gunicorn and Django tests
share: start it, spread requests over the workers, and check on the server that each
worker borrowed from a pool of its own while the master kept its session."""

from __future__ import annotations

import contextlib
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

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

#: Requests spread over the workers; every 4th goes to ``/dirty`` (changes its session).
REQUESTS = 400


@dataclass
class Gunicorn:
    """A running preloaded gunicorn: its master, port and log, and the backend pid the
    app in the master wrote to its pidfile."""

    master: subprocess.Popen[bytes]
    port: int
    log: Path
    master_backend: int
    #: Backend pids each worker pid answered from, filled by :meth:`spread_requests`.
    backends_by_worker: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))

    def spread_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """``REQUESTS`` requests on 8 threads; each path with the JSON body it got."""
        paths = ["/dirty" if i % 4 == 0 else "/" for i in range(REQUESTS)]
        with ThreadPoolExecutor(8) as executor:
            results = list(executor.map(lambda path: get_json(self.port, path), paths))
        assert [status for status, _ in results] == [200] * REQUESTS, self.log.read_text()
        for _, body in results:
            self.backends_by_worker[body["worker"]].add(body["backend"])
        return [(path, body) for path, (_, body) in zip(paths, results, strict=True)]

    def assert_a_pool_per_worker(self, admin: psycopg.Connection[Any], app_name: str) -> None:
        """Several workers served; no backend served two of them, none is the master's;
        the master's session, inherited by every worker, is still open."""
        workers = sorted(self.backends_by_worker)
        assert len(workers) >= 2, f"only {workers} served; expected several of 4 workers"
        assert self.master.pid not in workers
        every = [pid for pids in self.backends_by_worker.values() for pid in pids]
        assert len(every) == len(set(every)), dict(self.backends_by_worker)
        assert self.master_backend not in every
        on_server = backends_of(admin, app_name)
        assert set(every) <= on_server
        assert self.master_backend in on_server


@contextlib.contextmanager
def preloaded_gunicorn(
    app: str, worker_class: str, tmp_path: Path, **env: str
) -> Iterator[Gunicorn]:
    """gunicorn ``--preload --workers=4`` serving ``app`` (``module:callable``) with
    ``env`` added to the environment, once it answers; stopped on exit."""
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
        app,
    ]
    env = child_env(POOLKEEPER_EXAMPLE_WARM="1", POOLKEEPER_EXAMPLE_PIDFILE=str(pidfile), **env)
    log = tmp_path / "gunicorn.log"
    with running(args, env, log) as master:
        wait_until(lambda: answers(port), 20, f"gunicorn on port {port} ({log.read_text()})")
        yield Gunicorn(master, port, log, int(pidfile.read_text()))
