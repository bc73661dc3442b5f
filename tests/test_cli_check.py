"""``poolkeeper check``: against the test server, a closed port, and bad input."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from poolkeeper.cli import main
from poolkeeper.cli.app import app
from poolkeeper.cli.errors import ExitCode, explain_connect_failure

runner = CliRunner()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    # Closed now: nothing listens on it for the rest of the test (barring a rare reuse).
    return port


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poolkeeper", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_reports_the_server(dsn: str) -> None:
    result = runner.invoke(app, ["check", dsn, "--pings", "5"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "connected" in out
    assert "PostgreSQL" in out
    assert "median of 5 pings" in out
    assert "TLS" in out
    for setting in (
        "max_connections",
        "superuser_reserved_connections",
        "idle_session_timeout",
        "tcp_keepalives_idle",
    ):
        assert setting in out


def test_check_reads_database_url(dsn: str) -> None:
    result = _cli("check", env={"DATABASE_URL": dsn})
    assert result.returncode == 0, result.stderr
    assert "connected" in result.stdout


def test_check_require_tls_fails_without_tls(dsn: str) -> None:
    result = runner.invoke(app, ["check", dsn, "--require-tls", "--pings", "1"])
    assert result.exit_code == ExitCode.FAILED, result.output


def test_check_closed_port_is_one_line_exit_3() -> None:
    result = _cli("check", f"postgresql://postgres:s3cret-pw@127.0.0.1:{_closed_port()}/postgres")
    assert result.returncode == ExitCode.CANNOT_CONNECT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: connection refused")
    assert "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    # The advice is given once: ours, not libpq's own "Is the server running ...?" too.
    assert lines[0].lower().count("is the server running") == 0, lines[0]
    assert lines[0].count("is PostgreSQL running") == 1, lines[0]


@pytest.mark.parametrize(
    "bad",
    [
        "host='unterminated",
        "host=127.0.0.1 bogus_option=1",
        "host=127.0.0.1 port=abc",
        "host=127.0.0.1 port=99999",
        "host=127.0.0.1 connect_timeout=soon",
        "postgresql://app@127.0.0.1:5432/app?sslmode=bogus",
        "postgresql://app@localhost:notaport/app",
    ],
)
def test_check_of_a_dsn_that_cannot_be_used_as_written_exits_2(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/cli.md: exit 2 for "a DSN that cannot be parsed", whether libpq's parser or
    its connect step is what rejects the value."""
    assert main(["check", bad, "--timeout", "2"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("error: "), err
    assert "dsn" in err.lower(), err


def test_help_shows_placeholders_that_read_naturally(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pages = []
    for command in ([], ["demo"], ["check"], ["doctor"], ["bench"]):
        assert main([*command, "--help"]) == 0
        pages.append(capsys.readouterr().out)
    text = "\n".join(pages)
    for typer_type in ("<bool>", "<int", "<float", "<str>", "<list", "<dir>", "list[int]"):
        assert typer_type not in text, typer_type
    assert "--debug " in text
    assert "--other N " in text
    assert "--workers N " in text
    assert "--timeout SECONDS " in text
    assert "check [OPTIONS] [DSN]" in text
    # The command list is not cut off mid-sentence ("...").
    assert "..." not in pages[0].split("Commands:", 1)[1]


def test_check_one_ping_is_singular(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", dsn, "--pings", "1"]) == 0
    out = capsys.readouterr().out
    assert "median of 1 ping " in out, out


def test_check_unknown_database(dsn: str) -> None:
    bad = dsn.rsplit("/", 1)[0] + "/no_such_database_pk"
    result = _cli("check", bad)
    assert result.returncode == ExitCode.CANNOT_CONNECT
    assert result.stderr.startswith("error: unknown database")
    assert "createdb" in result.stderr


def test_check_bad_dsn_is_a_usage_error() -> None:
    result = _cli("check", "host='unterminated")
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: dsn: cannot be parsed")


def test_debug_shows_the_traceback() -> None:
    result = _cli("check", f"postgresql://postgres@127.0.0.1:{_closed_port()}/x", "--debug")
    assert result.returncode == ExitCode.CANNOT_CONNECT
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: connection refused")


def test_unknown_command_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == ExitCode.USAGE
    assert main(["check", "--frobnicate"]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: no such command 'frobnicate'; run 'poolkeeper --help'")
    assert err[1].startswith("error: no such option: --frobnicate; run 'poolkeeper check --help'")


def test_help_and_version() -> None:
    assert main(["--help"]) == 0
    assert main([]) == 0
    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("poolkeeper ")


@pytest.mark.parametrize(
    ("detail", "start", "hint"),
    [
        (
            'FATAL:  password authentication failed for user "app"',
            "authentication failed",
            "password",
        ),
        (
            'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "app", database "db", '
            "no encryption",
            "the server requires TLS",
            "sslmode=require",
        ),
        (
            "server does not support SSL, but SSL was required",
            "the server does not offer TLS",
            "sslmode=prefer",
        ),
        ('FATAL:  database "shop" does not exist', "unknown database", "createdb"),
        ("FATAL:  sorry, too many clients already", "the server is full", "doctor"),
        ('could not translate host name "db.example" to address', "unknown host", "host name"),
        ("timeout expired", "no answer from the server in time", "--timeout"),
        ("something else entirely", "cannot connect", "--debug"),
    ],
)
def test_connect_failures_get_a_hint(detail: str, start: str, hint: str) -> None:
    error = explain_connect_failure(detail)
    assert error.code == ExitCode.CANNOT_CONNECT
    line = error.line()
    assert line.startswith(f"error: {start}")
    assert hint in line.split("; ", 1)[1]
    assert "\n" not in line
