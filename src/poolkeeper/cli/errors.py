"""Exit codes, the one-line error users see, and what a failed connection most likely means."""

from __future__ import annotations

import enum
import re

from poolkeeper.redact import redact

__all__ = ["CliError", "ExitCode", "explain_connect_failure", "from_library_error", "one_line"]


class ExitCode(enum.IntEnum):
    """The process exit codes of every ``poolkeeper`` command (docs/cli.md lists them)."""

    OK = 0
    #: The command ran and found a problem: failed requests, a budget that does not fit...
    FAILED = 1
    #: Unknown command or option, bad value, unparsable DSN.
    USAGE = 2
    #: The server could not be reached or refused us.
    CANNOT_CONNECT = 3
    #: An optional dependency (extra) is not installed.
    MISSING_EXTRA = 4
    #: A bug in poolkeeper: rerun with --debug and report the traceback.
    INTERNAL = 5
    #: Ctrl-C (128 + SIGINT), as shells report it.
    INTERRUPTED = 130


class CliError(Exception):
    """An error the user can act on: printed as ``error: <what>; <todo>``, then exit ``code``."""

    def __init__(self, what: str, todo: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo
        self.code = code

    def line(self) -> str:
        """The single line printed on stderr (password-free)."""
        return one_line(f"error: {self.what}; {self.todo}")


_DOCS_SUFFIX = re.compile(r"\s*\(see docs/errors\.md#[\w-]+\)\s*$")


def one_line(text: str) -> str:
    """``text`` redacted, on one line, without the library's docs pointer."""
    flat = " ".join(redact(text).split())
    return _DOCS_SUFFIX.sub("", flat)


# (pattern in libpq's message, what happened, what to do, exit code). First match wins,
# so the specific causes come before the generic ones.
_CAUSES: tuple[tuple[re.Pattern[str], str, str, ExitCode], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), what, todo, code)
    for pattern, what, todo, code in (
        (
            # libpq checks a DSN's values only when it connects; they are still the DSN's
            # fault, not the server's, so they exit as a bad DSN does.
            r"invalid (integer )?value|invalid \w+ value|invalid port number|bad value for"
            r"|invalid connection option|invalid URI|Servname not supported",
            "the DSN has a value libpq does not accept",
            "fix that value in the DSN (postgresql://user@host:port/dbname or "
            "'host=... port=... dbname=...')",
            ExitCode.USAGE,
        ),
        (
            r"no pg_hba\.conf entry .*no encryption|SSL off|hostssl",
            "the server requires TLS for this connection",
            "add sslmode=require to the DSN (e.g. postgresql://...?sslmode=require)",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r"server does not support SSL",
            "the server does not offer TLS, but the DSN requires it",
            "use sslmode=prefer in the DSN, or enable ssl on the server",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r"password authentication failed|no password supplied|authentication failed"
            r"|SASL authentication|peer authentication",
            "authentication failed",
            "check the user and password (in the DSN or PGPASSWORD/~/.pgpass) and pg_hba.conf",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r'role "[^"]*" does not exist',
            "authentication failed: the user does not exist on the server",
            "fix the user name in the DSN, or create the role (CREATE ROLE ... LOGIN)",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r'database "[^"]*" does not exist',
            "unknown database",
            "fix the database name in the DSN, or create it (createdb NAME)",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r"too many clients|remaining connection slots are reserved",
            "the server is full (max_connections reached)",
            "close idle connections or lower pool sizes; 'poolkeeper doctor' shows the budget",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r"Connection refused",
            "connection refused",
            "is PostgreSQL running and listening on that host and port? "
            "check the DSN's host/port, listen_addresses and firewalls",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r"could not translate host name|failed to resolve host|Name or service not known"
            r"|nodename nor servname",
            "unknown host",
            "check the host name in the DSN",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r"timeout expired|timed out|no connection free within",
            "no answer from the server in time",
            "check the host, port and firewalls, or raise --timeout",
            ExitCode.CANNOT_CONNECT,
        ),
        (
            r"No such file or directory",
            "no server on the local socket",
            "start PostgreSQL, or pass a DSN / set DATABASE_URL",
            ExitCode.CANNOT_CONNECT,
        ),
    )
)

# libpq's own advice after a refused connection; ours replaces it, so it is said once.
_LIBPQ_ADVICE = re.compile(
    r"\s*Is the server running (on that host|locally) and accepting[^?]*\?", re.IGNORECASE
)


def explain_connect_failure(detail: str) -> CliError:
    """Turn libpq's message for a failed connect into an error with a hint: exit code 3,
    or 2 when the DSN itself holds a value libpq rejects."""
    for pattern, what, todo, code in _CAUSES:
        if pattern.search(detail):
            shown = one_line(_LIBPQ_ADVICE.sub("", detail))
            return CliError(f"{what} ({shown})", todo, code)
    return CliError(
        f"cannot connect ({one_line(detail) or 'no detail'})",
        "check the DSN and that the server is reachable; --debug shows more",
        ExitCode.CANNOT_CONNECT,
    )


def from_library_error(exc: BaseException, code: ExitCode, todo: str) -> CliError:
    """A library error as a ``CliError``; its own "; what to do" part wins over ``todo``."""
    text = one_line(str(exc))
    what, sep, own_todo = text.partition("; ")
    return CliError(what, own_todo if sep else todo, code)
