"""``poolkeeper demo``: the README's first command, run for real as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from poolkeeper.cli.demo_workload import may_retry


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# A shell starts background jobs with SIGINT ignored, and Python keeps an inherited
# SIG_IGN instead of raising KeyboardInterrupt: the demo gets a normal Ctrl-C however
# the suite itself was launched.
_WITH_DEFAULT_SIGINT = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('poolkeeper', run_name='__main__', alter_sys=True)"
)


def _data_dir(stdout: str) -> Path:
    match = re.search(r"data: (\S+)\)", stdout)
    assert match, stdout
    return Path(match[1])


@pytest.mark.timeout(90)
def test_demo_quick_end_to_end_on_the_embedded_server() -> None:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "poolkeeper", "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=80,
        env=_env(),
        check=False,
    )
    took = time.monotonic() - start
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^\s+failed\s+0\s*$", out, re.M), out
    assert re.search(r"^\s+recovered\s+yes\b", out, re.M), out
    killed = re.search(r"^\s+killed\s+(\d+)\s+backends", out, re.M)
    assert killed and int(killed[1]) > 0, out
    assert "Traceback" not in result.stderr
    # The server was stopped and its temporary directory removed.
    assert "embedded PostgreSQL stopped" in out
    assert not _data_dir(out).exists()
    assert took < 20 + 10  # --quick promises < 20 s; slack for a loaded CI machine


@pytest.mark.timeout(90)
def test_demo_ctrl_c_stops_the_embedded_server() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WITH_DEFAULT_SIGINT, "demo", "--no-live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        # Wait until requests are flowing (the first status line), then interrupt.
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "threads:" in line:
                break
        stdout_so_far = "".join(lines)
        data_dir = _data_dir(stdout_so_far)
        port = re.search(r"127\.0\.0\.1:(\d+)", stdout_so_far)
        assert port, stdout_so_far
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout_so_far + rest + err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert not data_dir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port[1]}/postgres", connect_timeout=2)


def test_retry_only_when_nothing_can_have_been_committed() -> None:
    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    killed = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    not_lost = psycopg.errors.UndefinedTable("relation does not exist")
    assert may_retry(lost, attempt=1, may_have_committed=False)
    assert may_retry(killed, attempt=1, may_have_committed=False)
    assert not may_retry(lost, attempt=2, may_have_committed=False)
    assert not may_retry(lost, attempt=1, may_have_committed=True)
    assert not may_retry(not_lost, attempt=1, may_have_committed=False)
    assert not may_retry(RuntimeError("boom"), attempt=1, may_have_committed=False)


def test_demo_against_database_url_writes_nothing(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM pg_class WHERE relpersistence = 'p'").fetchone()
    env = {**_env(), "DATABASE_URL": dsn}
    result = subprocess.run(
        [sys.executable, "-m", "poolkeeper", "demo", "--duration", "3", "--no-live"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "using DATABASE_URL" in result.stdout
    assert re.search(r"^\s+failed\s+0\s*$", result.stdout, re.M)
    # Without a terminal (logs, CI, pipes) no line runs past 100 columns.
    widest = max(result.stdout.splitlines(), key=len)
    assert len(widest) <= 100, widest
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = conn.execute("SELECT count(*) FROM pg_class WHERE relpersistence = 'p'").fetchone()
        leftover = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'pk-demo-%'"
        ).fetchone()
    assert before == after
    assert leftover == (0,)
