"""``DatabaseWrapper``: Django's PostgreSQL backend, borrowing from a poolkeeper pool.

Django opens a connection when a request first touches the database and closes it
when the request ends (``CONN_MAX_AGE = 0``). Here "open" borrows from a
:class:`poolkeeper.Database` kept per alias and process, and "close" returns the
connection to it. What Django sets on a new connection (time zone, ``assume_role``,
the isolation level, the cursor class) is applied in poolkeeper's ``configure=``
hook, so it is the baseline poolkeeper restores after resetting a borrower's changes.

A forked worker (gunicorn ``--preload``) never uses or returns a connection its
parent borrowed: poolkeeper made the inherited socket inert, so the backend only
forgets it, and the worker's first query builds the worker's own pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

try:
    from django.db.backends.base.base import NO_DB_ALIAS
    from django.db.backends.postgresql import base as _pg
    from django.db.backends.postgresql.psycopg_any import IsolationLevel, is_psycopg3
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "poolkeeper.integrations.django needs Django: pip install 'poolkeeper[django]'"
    ) from exc

import psycopg.sql

from poolkeeper.config import PoolConfig
from poolkeeper.database import Database
from poolkeeper.errors import ConfigurationError

__all__ = ["DatabaseWrapper"]

# Settings the backend derives from DATABASES itself; OPTIONS["pool"] may not set them.
_DERIVED = frozenset({"dsn", "connect_kwargs", "configure", "driver", "name", "open", "config"})
_POOL_SETTINGS = frozenset(PoolConfig.__dataclass_fields__) - _DERIVED - {"explicit"}


class _Databases:
    """The poolkeeper ``Database`` of each alias, rebuilt when its settings change
    (Django's test runner renames the database; ``override_settings`` changes the
    time zone)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_alias: dict[str, tuple[str, Database]] = {}
        self._serial = 0

    def get(self, wrapper: DatabaseWrapper) -> Database:
        key = wrapper._pk_settings_key()
        found = self._by_alias.get(wrapper.alias)
        if found is not None and found[0] == key:
            return found[1]
        with self._lock:
            found = self._by_alias.get(wrapper.alias)
            if found is not None and found[0] == key:
                return found[1]
            if found is not None:
                # In the background: close_all_connections() waits for connections
                # other threads still hold, and this caller must not wait on them.
                threading.Thread(
                    target=found[1].close_all_connections, name="poolkeeper-django-close"
                ).start()
            self._serial += 1
            database = wrapper._pk_make_database(f"django.{wrapper.alias}.{self._serial}")
            self._by_alias[wrapper.alias] = (key, database)
            return database

    def close(self, alias: str) -> None:
        with self._lock:
            found = self._by_alias.pop(alias, None)
        if found is not None:
            found[1].close_all_connections()


_databases = _Databases()


def pool_settings(alias: str, settings_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`poolkeeper.Pool` settings of ``DATABASES[alias]``, checked.

    Raises ``ConfigurationError`` naming the setting when ``OPTIONS["pool"]`` is not a
    dict of Pool settings, or when ``CONN_MAX_AGE`` asks Django to keep connections
    across requests (the pool keeps them; a request holding one would starve others).
    """
    where = f"DATABASES[{alias!r}]"
    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        raise ConfigurationError(
            f"{where}['CONN_MAX_AGE']: must be 0 with poolkeeper (got {max_age!r}); the "
            "pool keeps connections open between requests, so set CONN_MAX_AGE to 0"
        )
    raw = settings_dict.get("OPTIONS", {}).get("pool", {})
    if raw is True or raw is False or raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"{where}['OPTIONS']['pool']: must be a dict of poolkeeper Pool settings "
            f"(e.g. {{'max_size': 10, 'timeout': 5}}), not {type(raw).__name__}"
        )
    for key in raw:
        if key in _DERIVED:
            raise ConfigurationError(
                f"{where}['OPTIONS']['pool'][{key!r}]: set by the backend from DATABASES "
                "(NAME, USER, PASSWORD, HOST, PORT, OPTIONS); remove it"
            )
        if key not in _POOL_SETTINGS:
            raise ConfigurationError(
                f"{where}['OPTIONS']['pool'][{key!r}]: not a poolkeeper Pool setting; "
                f"use one of {', '.join(sorted(_POOL_SETTINGS))}"
            )
    return dict(raw)


class DatabaseWrapper(_pg.DatabaseWrapper):  # type: ignore[misc]
    """Django's PostgreSQL ``DatabaseWrapper`` on a poolkeeper pool (psycopg 3 only)."""

    def __init__(self, settings_dict: dict[str, Any], alias: str = "default") -> None:
        super().__init__(settings_dict, alias)
        self._pk_lender: Database | None = None
        self._pk_pid: int | None = None
        if self._pk_pooled():
            if not is_psycopg3:
                raise ConfigurationError(
                    f"DATABASES[{alias!r}]['ENGINE']: poolkeeper.integrations.django needs "
                    "psycopg 3 (pip install 'psycopg[binary]'); psycopg2 is not supported"
                )
            pool_settings(alias, settings_dict)

    # -- the pool ---------------------------------------------------------------------

    @property
    def pool(self) -> Database | None:
        """The poolkeeper ``Database`` this alias borrows from (None for the
        no-database connection Django uses to create and drop test databases, and
        with ``OPTIONS["pool"] = False``)."""
        if not self._pk_pooled():
            return None
        return _databases.get(self)

    def close_pool(self) -> None:
        """Close this alias's pool; the next connection builds a fresh one."""
        if self.alias != NO_DB_ALIAS:
            _databases.close(self.alias)

    def ensure_timezone(self) -> bool:
        """Set the current connection's time zone to Django's (after ``TIME_ZONE`` or
        ``USE_TZ`` changed); the next borrow comes from a pool made for the new value.
        Returns whether a statement was sent."""
        if not self._pk_pooled():
            return bool(super().ensure_timezone())
        if self.connection is None:
            return False
        return bool(self._configure_timezone(self.connection))

    def _pk_pooled(self) -> bool:
        # Read each time: Django's tests change OPTIONS on a live wrapper.
        return self.alias != NO_DB_ALIAS and self.settings_dict["OPTIONS"].get("pool") is not False

    def _pk_settings_key(self) -> str:
        d = self.settings_dict
        parts = (d.get(k) for k in ("NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS"))
        return repr((*parts, self.timezone_name, _pg.settings.USE_TZ))

    def _pk_make_database(self, name: str) -> Database:
        params = self.get_connection_params()
        # Django's own pool does the same: autocommit until Django sets it per borrow,
        # so that configure's SET statements commit at once.
        params["autocommit"] = True
        options = self.settings_dict["OPTIONS"]
        isolation = options.get("isolation_level")
        role = options.get("assume_role")
        configure_timezone = self._configure_timezone

        def configure(conn: Any) -> None:
            # Also when poolkeeper re-runs this after a reset on return, where the
            # connection may still be in the borrower's autocommit=False.
            conn.autocommit = True
            if isolation is not None:
                conn.isolation_level = IsolationLevel(isolation)
            configure_timezone(conn)
            if role:
                # Not Django's _configure_role: it quotes through the wrapper's own
                # connection, which would borrow again from inside this borrow.
                conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))

        return Database(
            name=name,
            dsn="",
            connect_kwargs=params,
            configure=configure,
            **pool_settings(self.alias, self.settings_dict),
        )

    # -- borrowing and returning ------------------------------------------------------

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        """Borrow a connection (Django calls this when it opens one)."""
        database = self.pool
        if database is None:
            self._pk_lender = self._pk_pid = None
            return super().get_new_connection(conn_params)
        isolation = self.settings_dict["OPTIONS"].get("isolation_level")
        try:
            self.isolation_level = (
                IsolationLevel.READ_COMMITTED if isolation is None else IsolationLevel(isolation)
            )
        except ValueError:
            raise ConfigurationError(
                f"DATABASES[{self.alias!r}]['OPTIONS']['isolation_level']: {isolation!r} "
                "is not a psycopg.IsolationLevel value"
            ) from None
        conn = database.get_connection()
        # Returned to the pool that lent it, even if the settings changed meanwhile.
        self._pk_lender, self._pk_pid = database, os.getpid()
        return conn

    def init_connection_state(self) -> None:
        """Django's per-connection set-up, minus what ``configure=`` already did."""
        if not self._pk_pooled():
            super().init_connection_state()
            return
        # The base class's version (the backend's own runs the time zone and role
        # statements, which configure= has applied).
        _pg.BaseDatabaseWrapper.init_connection_state(self)

    def _close(self) -> None:
        """Return the connection to the pool (Django calls this when it closes one)."""
        conn: Any = getattr(self, "connection", None)
        lender, pid = self._pk_lender, self._pk_pid
        if conn is None or lender is None:
            super()._close()
            return
        self.connection = None
        self._pk_lender = self._pk_pid = None
        if pid != os.getpid():
            # Borrowed by the process we were forked from: its socket is inert here,
            # and the parent's pool is not ours to return it to.
            return
        with self.wrap_database_errors:
            lender.release_connection(conn)

    def close_if_health_check_failed(self) -> None:
        """Nothing to do: the pool checks a connection before lending it."""
        if not self._pk_pooled():
            super().close_if_health_check_failed()
