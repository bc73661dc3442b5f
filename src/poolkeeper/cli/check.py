"""``poolkeeper check [DSN]``: can we connect, to what, how fast, and with which limits?"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Iterator
from typing import Any

from poolkeeper.cli.errors import CliError, ExitCode, explain_connect_failure, from_library_error
from poolkeeper.cli.output import fmt_ms, out, plural, warn
from poolkeeper.config import PoolConfig
from poolkeeper.errors import ConfigurationError, ConnectionFailed, PoolTimeout
from poolkeeper.pool import Pool
from poolkeeper.redact import redact

__all__ = ["SETTINGS", "CheckReport", "borrow", "connected_to", "run_check", "server_settings"]

#: The server settings that decide how a pool behaves, with why each matters.
SETTINGS: dict[str, str] = {
    "max_connections": "the server-wide connection limit every pool shares",
    "superuser_reserved_connections": "slots only superusers may use",
    "reserved_connections": "slots for pg_use_reserved_connections members (PG 16+)",
    "idle_session_timeout": "server closes idle sessions; keep the pool's max_idle below it",
    "idle_in_transaction_session_timeout": "server ends sessions idle inside a transaction",
    "tcp_keepalives_idle": "seconds before the server probes a silent client (0: OS default)",
    "tcp_keepalives_interval": "seconds between keepalive probes (0: OS default)",
    "tcp_keepalives_count": "lost probes before the server drops the client (0: OS default)",
    "tcp_user_timeout": "ms unacknowledged data may wait before the server drops (0: OS)",
}

_SETTINGS_SQL = """
SELECT name, setting, coalesce(unit, '') FROM pg_settings WHERE name = ANY(%s) ORDER BY name
"""


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What ``check`` found."""

    target: str
    server_version: str
    user: str
    database: str
    tls: str | None
    pings_ms: tuple[float, ...]
    settings: dict[str, tuple[str, str]]
    connections_now: int

    @property
    def latency_ms(self) -> float:
        """Median round trip."""
        return statistics.median(self.pings_ms)


def _pool_for(dsn: str | None, timeout: float) -> Pool:
    try:
        config = PoolConfig.build(
            dsn,
            name="poolkeeper-check",
            min_size=1,
            max_size=1,
            timeout=timeout,
            connect_timeout=timeout,
            # One failed connect is the answer; no need to keep trying for minutes.
            reconnect_timeout=timeout,
        )
    except ConfigurationError as exc:
        raise from_library_error(
            exc, ExitCode.USAGE, "see 'poolkeeper check --help' for the DSN forms"
        ) from None
    return Pool(config=config)


@contextlib.contextmanager
def borrow(dsn: str | None, *, timeout: float) -> Iterator[Any]:
    """A connection through a one-connection pool; connect failures become a ``CliError``."""
    pool = _pool_for(dsn, timeout)
    try:
        try:
            conn = pool.getconn(timeout)
        except (ConnectionFailed, PoolTimeout) as exc:
            raise _connect_error(exc, pool) from exc
        try:
            yield conn
        finally:
            pool.putconn(conn)
    finally:
        pool.close(timeout=1.0)


def _connect_error(exc: ConnectionFailed | PoolTimeout, pool: Pool) -> CliError:
    # libpq's own message says why; the pool keeps it on the error or as the last error.
    detail = ""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, ConnectionFailed) and candidate.detail:
            detail = candidate.detail
            break
    if not detail:
        detail = pool.stats().last_error or str(exc)
    return explain_connect_failure(detail)


def connected_to(conn: Any) -> str:
    """``user@host:port/dbname`` of the server ``conn`` reached, password-free: what a
    DSN (or, without one, libpq's defaults) actually led to."""
    info = conn.info
    return redact(f"{info.user}@{info.host}:{info.port}/{info.dbname}")


def server_settings(dsn: str | None, *, timeout: float) -> tuple[str, dict[str, str]]:
    """The server reached (see :func:`connected_to`) and the :data:`SETTINGS` it has
    (name -> value as text; absent ones left out)."""
    with borrow(dsn, timeout=timeout) as conn:
        rows = conn.execute(_SETTINGS_SQL, [list(SETTINGS)]).fetchall()
        server = connected_to(conn)
    return server, {name: setting for name, setting, _unit in rows}


def collect(dsn: str | None, *, pings: int, timeout: float) -> CheckReport:
    """Connect through a pool and gather a :class:`CheckReport`."""
    with borrow(dsn, timeout=timeout) as conn:
        version, user, database = conn.execute(
            "SELECT current_setting('server_version'), current_user, current_database()"
        ).fetchone()
        ssl_row = conn.execute(
            "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        tls = f"{ssl_row[1]} ({ssl_row[2]})" if ssl_row and ssl_row[0] else None
        rows = conn.execute(_SETTINGS_SQL, [list(SETTINGS)]).fetchall()
        (connections_now,) = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ).fetchone()
        conn.rollback()
        # Untimed: the first statement of a transaction also pays for its BEGIN.
        conn.execute("SELECT 1").fetchone()
        samples = []
        for _ in range(pings):
            start = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            samples.append((time.perf_counter() - start) * 1000)
        conn.rollback()
        reached = connected_to(conn)
    config = PoolConfig.build(dsn)
    target = config.redacted_dsn() or f"{reached} (libpq's defaults and PG* variables)"
    return CheckReport(
        target=target,
        server_version=str(version),
        user=str(user),
        database=str(database),
        tls=tls,
        pings_ms=tuple(samples),
        settings={name: (str(setting), str(unit)) for name, setting, unit in rows},
        connections_now=int(connections_now),
    )


def _show_setting(value: str, unit: str) -> str:
    if unit and value == "0" and unit in ("ms", "s", "min"):
        return "0 (off)"
    return f"{value} {unit}".strip()


def run_check(dsn: str | None, *, pings: int, timeout: float, require_tls: bool) -> int:
    """The ``check`` command: returns the exit code."""
    report = collect(dsn, pings=pings, timeout=timeout)
    out.print(f"[green]connected[/] to {report.target}")
    out.print(f"  server      PostgreSQL {report.server_version}")
    out.print(f"  as          user {report.user}, database {report.database}")
    out.print(f"  TLS         {report.tls or '[yellow]not in use[/]'}")
    pinged = plural(len(report.pings_ms), "ping")
    out.print(
        f"  latency     {fmt_ms(report.latency_ms)} median of {pinged} "
        f"(min {fmt_ms(min(report.pings_ms))}, max {fmt_ms(max(report.pings_ms))})"
    )
    out.print(f"  clients     {plural(report.connections_now, 'client backend')} connected now")
    out.print("[bold]settings[/]")
    for name, why in SETTINGS.items():
        if name in report.settings:
            shown = _show_setting(*report.settings[name])
            out.print(f"  {name:<36} {shown:<10} [dim]{why}[/]")
    idle = report.settings.get("idle_session_timeout")
    if idle and idle[0] != "0":
        warn(
            f"idle_session_timeout is {_show_setting(*idle)}: set the pool's max_idle "
            "(seconds) below it, or idle connections will be closed under the pool"
        )
    if require_tls and report.tls is None:
        out.print("[red]TLS is not in use[/] and --require-tls was given")
        return ExitCode.FAILED
    return ExitCode.OK
