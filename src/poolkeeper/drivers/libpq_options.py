"""What the two libpq-based drivers (psycopg 3, psycopg2) share about libpq: the
connection parameters for the pool's timeouts, and reading libpq's connect errors."""

from __future__ import annotations

import math
from typing import Any

from poolkeeper.conninfo import parse_conninfo
from poolkeeper.drivers.base import ConnectSpec

__all__ = ["libpq_params", "libpq_server_refused", "merge_conninfo"]


def libpq_server_refused(message: str) -> bool:
    """Did the server answer a libpq connection attempt with an error (too many
    connections, authentication, ``cannot_connect_now``), rather than not answer?

    libpq reports no SQLSTATE for a failed connection attempt, only text. It prints
    the server's error as ``SEVERITY:  message`` (a colon and two spaces), whatever
    the server's language; its own messages (refused, timed out, unknown host) never
    have that shape.
    """
    return ":  " in message


def libpq_params(spec: ConnectSpec) -> dict[str, Any]:
    """libpq keywords for the pool's timeouts, merged under the user's own.

    The user's conninfo and keyword arguments win over these defaults, so a
    DSN that sets ``keepalives_idle`` keeps it.
    """
    params: dict[str, Any] = {
        # libpq counts whole seconds and treats values below 2 as 2.
        "connect_timeout": max(2, math.ceil(spec.connect_timeout)),
    }
    if spec.keepalive_idle is not None:
        idle = max(1, round(spec.keepalive_idle))
        params.update(keepalives=1, keepalives_idle=idle, keepalives_interval=max(1, idle // 3))
        params["keepalives_count"] = 3
    if spec.tcp_user_timeout is not None:
        params["tcp_user_timeout"] = round(spec.tcp_user_timeout * 1000)
    options = []
    if spec.statement_timeout is not None:
        options.append(f"-c statement_timeout={round(spec.statement_timeout * 1000)}")
    if spec.idle_in_transaction_timeout is not None:
        ms = round(spec.idle_in_transaction_timeout * 1000)
        options.append(f"-c idle_in_transaction_session_timeout={ms}")
    if spec.read_only:
        options.append("-c default_transaction_read_only=on")
    if options:
        params["options"] = " ".join(options)
    return params


def merge_conninfo(spec: ConnectSpec) -> dict[str, Any]:
    """Pool defaults < the user's conninfo < the user's keyword arguments."""
    defaults = libpq_params(spec)
    given = parse_conninfo(spec.conninfo)
    params = {**defaults, **given}
    if "options" in given and "options" in defaults:
        # Both sets of -c flags must reach the server; the user's come last and win.
        params["options"] = f"{defaults['options']} {given['options']}"
    params.update(spec.kwargs)
    return params
