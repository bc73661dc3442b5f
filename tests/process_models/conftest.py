"""Fixtures for the process-model tests: real servers and workers started as subprocesses.

Each test starts its own gunicorn, Celery worker or Python parent process, owns it by
pid (its own session, so its whole process group can be stopped), and checks what
happened on the PostgreSQL server, by ``application_name``, never through the pool.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app_name() -> str:
    """A unique application_name, so the server tells this test's backends apart."""
    return f"pk-proc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def app_dsn(dsn: str, app_name: str) -> str:
    """The test server's DSN with this test's application_name."""
    return make_conninfo(dsn, application_name=app_name)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: ours, the repository importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` in a session of its own; on exit stop that process group (TERM, then
    KILL after 10 s). Its output goes to ``log``, which a failing test prints."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal the process group we started; wait for its leader (KILL after 10 s)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return int(proc.returncode)


def backends_of(admin: psycopg.Connection[Any], app_name: str) -> set[int]:
    """Server pids of the backends connected with ``app_name``."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        [app_name],
    ).fetchall()
    return {row[0] for row in rows}


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def python() -> str:
    """The interpreter running the tests (the venv's)."""
    return sys.executable


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET ``path`` from a server on loopback ``port``: the status, and the JSON body of a 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, json.loads(body) if response.status == 200 else {}


def answers(port: int) -> bool:
    """Does the server on ``port`` answer ``GET /`` with 200 yet?"""
    try:
        return get_json(port, "/")[0] == 200
    except OSError:
        return False
