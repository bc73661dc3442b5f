"""libpq connection strings: the one place that parses them.

Every driver takes libpq's format (asyncpg through a translation), so the rules are
libpq's whatever the driver; psycopg's parser implements them, and psycopg 3 is the
one core dependency. Nothing else in the package imports ``psycopg.conninfo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.conninfo import conninfo_to_dict

__all__ = ["parse_conninfo", "wants_standby"]

_STANDBY_TARGETS = frozenset({"read-only", "standby", "prefer-standby"})


def parse_conninfo(conninfo: str) -> dict[str, Any]:
    """A URL or ``key=value`` string as a dict ({} for ""); raises on a malformed one."""
    return conninfo_to_dict(conninfo) if conninfo else {}


def wants_standby(dsn: object, connect_kwargs: object) -> bool:
    """True if the settings ask libpq for a standby (``target_session_attrs``).

    A callable DSN or kwargs is not called here: it may fetch a token on every call.
    """
    target = None
    if isinstance(connect_kwargs, Mapping):
        target = connect_kwargs.get("target_session_attrs")
    if target is None and isinstance(dsn, str) and "target_session_attrs" in dsn:
        try:
            target = parse_conninfo(dsn).get("target_session_attrs")
        except Exception:  # an unparsable DSN fails at connect, with a better message
            target = None
    return target in _STANDBY_TARGETS
