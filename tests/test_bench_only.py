"""``--only`` of the benchmark scripts: an unknown name stops the run and lists the known ones.

Run as a user would, against a server that cannot be reached: the name is checked
before anything is started or connected to, so the answer is the usage error, at once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.instructions import CONTENDED_VARIANTS, VARIANTS
from benchmarks.run import CONTENDER_NAMES

ROOT = Path(__file__).resolve().parent.parent

#: A DSN nothing answers: a socket directory that does not exist.
UNREACHABLE = "host=/nonexistent/poolkeeper-bench-test dbname=none connect_timeout=1"


def bench(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.<module> args`` from the checkout."""
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_run_only_with_an_unknown_contender_is_a_usage_error_listing_the_known_ones() -> None:
    result = bench("run", "--dsn", UNREACHABLE, "--quick", "--only", "poolkeeper,psycopg_pol")

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    message = result.stderr.strip().splitlines()[-1]
    assert "argument --only: unknown contender(s): psycopg_pol;" in message
    known = message.split("known: ", 1)[1].split(", ")
    assert known == list(CONTENDER_NAMES)
    assert {"poolkeeper", "psycopg_pool", "asyncpg_pool", "dedicated_psycopg"} <= set(known)


def test_run_only_with_no_name_at_all_is_a_usage_error() -> None:
    result = bench("run", "--dsn", UNREACHABLE, "--only", ",")

    assert result.returncode == 2, result.stderr
    assert "argument --only: expected comma-separated contender names" in result.stderr


def test_instructions_only_with_an_unknown_variant_lists_the_known_ones() -> None:
    # Checked before the valgrind check too: this host need not have valgrind.
    result = bench("instructions", "--dsn", UNREACHABLE, "--only", "poolkeeper,threads_pk")

    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "unknown variant(s): threads_pk;" in message
    assert message.split("known: ", 1)[1].split(", ") == [*VARIANTS, *CONTENDED_VARIANTS]
