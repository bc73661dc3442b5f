"""``poolkeeper bench``: the benchmark harness against a given server, as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("psycopg_pool", reason="the [bench] extra is not installed")

TINY = [
    "--rounds", "1", "--duration", "0.2", "--warmup", "0.05", "--threads", "1",
    "--no-async", "--no-memory", "--micro-iterations", "2000",
]  # fmt: skip


def poolkeeper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed command line as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "poolkeeper", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


@pytest.mark.timeout(150)
def test_bench_runs_the_side_by_side_harness_against_the_given_server(dsn: str) -> None:
    result = poolkeeper("bench", "--dsn", dsn, *TINY)
    assert result.returncode == 0, result.stderr
    assert "Issue 5 targets" in result.stdout
    assert "psycopg_pool" in result.stdout
    assert "poolkeeper" in result.stdout


def test_bench_without_a_server_says_what_to_do_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = poolkeeper("bench", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DATABASE_URL" in lines[0]
