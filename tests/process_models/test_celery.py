"""A Celery prefork worker (concurrency 4, Redis broker) whose tasks use ``Database()``.

The worker's main process imports the app (examples/process_models/celery_app.py) and
uses the pool before the prefork children exist; every child must build its own pool,
and the main process's session must survive them.
"""

from __future__ import annotations

import socket
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.process_models.conftest import backends_of, child_env, python, running, wait_until

celery = pytest.importorskip("celery", reason="celery is in the [test] extra")

REDIS = ("127.0.0.1", 6379)
TASKS = 100


def _redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def broker() -> str:
    """This machine's Redis (the Celery broker and result store); skipped only without one."""
    if not _redis_answers():
        pytest.skip(f"no Redis answers at {REDIS[0]}:{REDIS[1]}; the Celery test needs one")
    return f"redis://{REDIS[0]}:{REDIS[1]}/0"


def test_prefork_children_each_get_their_own_pool(
    broker: str,
    app_dsn: str,
    app_name: str,
    admin: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    queue = f"poolkeeper-test-{uuid.uuid4().hex[:10]}"
    pidfile = tmp_path / "main-backend"
    env = child_env(
        CELERY_BROKER_URL=broker,
        DATABASE_URL=app_dsn,
        POOLKEEPER_EXAMPLE_QUEUE=queue,
        POOLKEEPER_EXAMPLE_WARM="1",
        POOLKEEPER_EXAMPLE_PIDFILE=str(pidfile),
    )
    args = [
        python(),
        "-m",
        "celery",
        "-A",
        "examples.process_models.celery_app",
        "worker",
        "--pool=prefork",
        "--concurrency=4",
        f"--queues={queue}",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
        f"--hostname={queue}@localhost",
    ]
    client = celery.Celery("poolkeeper-test-client", broker=broker, backend=broker)
    log = tmp_path / "celery.log"
    try:
        with running(args, env, log):
            wait_until(pidfile.exists, 30, f"the Celery worker to start ({log})")
            main_backend = int(pidfile.read_text())
            results = [
                client.send_task("poolkeeper_example.backend_pid", args=[n], queue=queue)
                for n in range(TASKS)
            ]
            answers = [result.get(timeout=30) for result in results]

            assert [answer["doubled"] for answer in answers] == [2 * n for n in range(TASKS)]
            backends_by_child: dict[int, set[int]] = defaultdict(set)
            for answer in answers:
                backends_by_child[answer["worker"]].add(answer["backend"])
            assert len(backends_by_child) >= 2, dict(backends_by_child)
            every = [pid for pids in backends_by_child.values() for pid in pids]
            # No backend served two children, none is the main process's, and each
            # child's pool stayed within its max_size.
            assert len(every) == len(set(every)), dict(backends_by_child)
            assert main_backend not in every
            assert all(len(pids) <= 10 for pids in backends_by_child.values())
            on_server = backends_of(admin, app_name)
            assert main_backend in on_server
            assert set(every) <= on_server
        wait_until(lambda: not backends_of(admin, app_name), 15, "every backend to close")
    finally:
        client.close()
