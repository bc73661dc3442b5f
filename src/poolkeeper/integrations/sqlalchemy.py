"""SQLAlchemy 2.x engines on a poolkeeper pool (``pip install 'poolkeeper[sqlalchemy]'``).

.. code-block:: python

    from poolkeeper.integrations.sqlalchemy import create_engine

    engine = create_engine("postgresql://app@db/app", max_size=10, engine={"echo": True})

Core connections and ORM sessions then borrow from a poolkeeper pool: FIFO waiting,
health checks, the breaker, fork safety, session reset and redaction all apply.
:func:`create_async_engine` does the same for ``AsyncEngine`` (psycopg 3 async or
asyncpg). The engine's dialect follows the pool's driver: ``postgresql+psycopg``,
``postgresql+psycopg2`` or ``postgresql+asyncpg``.

How it fits together: :class:`PoolkeeperPool` is a ``sqlalchemy.pool.Pool`` over a
:class:`~poolkeeper.Database` (:class:`PoolkeeperAsyncPool`: an
:class:`~poolkeeper.AsyncDatabase`) of its own. Each checkout borrows a connection
from poolkeeper and each checkin returns it; SQLAlchemy's per-connection setup (the
dialect's own, and your ``connect`` event listeners) runs inside poolkeeper's
``configure=`` step, so it runs once per new connection and again after poolkeeper
reset the session, and what it sets is the baseline every borrower sees.

Events: ``checkout``, ``checkin``, ``reset``, ``invalidate`` and ``close`` work as
with SQLAlchemy's own pools. ``connect`` (and ``first_connect``) fire when poolkeeper
opens a connection and again after it reset that connection's session (``DISCARD
ALL``), i.e. whenever the session is fresh: per-session setup (``SET ...``) belongs
there, and what the listeners leave in an open transaction is committed.
``engine.dispose()`` replaces every connection (poolkeeper's ``drain()``: borrowed
ones are replaced when returned). ``pool_pre_ping`` and ``pool_recycle`` are refused:
poolkeeper checks idle connections before lending them (``check="auto"``) and
retires them after ``max_lifetime``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.pool.base import _ConnectionRecord
from sqlalchemy.util import await_only, greenlet_spawn

from poolkeeper.async_database import AsyncDatabase
from poolkeeper.conninfo import parse_conninfo
from poolkeeper.database import Database
from poolkeeper.errors import ConfigurationError, PoolError

__all__ = [
    "PoolkeeperAsyncPool",
    "PoolkeeperPool",
    "create_async_engine",
    "create_engine",
]

_log = logging.getLogger("poolkeeper.integrations.sqlalchemy")

#: The SQLAlchemy dialect for each poolkeeper driver.
_SYNC_DIALECTS = {"psycopg": "postgresql+psycopg", "psycopg2": "postgresql+psycopg2"}
_ASYNC_DIALECTS = {"psycopg": "postgresql+psycopg", "asyncpg": "postgresql+asyncpg"}
#: create_engine() arguments that configure SQLAlchemy's own pool, and what to use instead.
_REFUSED_ENGINE_ARGS = {
    "pool_pre_ping": "poolkeeper checks idle connections before lending them "
    "(check='auto'); leave pool_pre_ping out",
    "pool_recycle": "use poolkeeper's max_lifetime= instead",
    "pool_size": "use poolkeeper's min_size= / max_size= instead",
    "max_overflow": "use poolkeeper's max_size= instead",
    "pool_timeout": "use poolkeeper's timeout= instead",
    "pool_use_lifo": "poolkeeper already reuses the most recently returned connection",
    "poolclass": "the engine's pool is poolkeeper's; leave poolclass out",
    "pool": "the engine's pool is poolkeeper's; leave pool out",
    "creator": "poolkeeper opens the connections; use configure= for per-connection setup",
    "async_creator": "poolkeeper opens the connections; use configure= for per-connection setup",
}
_names = itertools.count(1)


def _is_closed(conn: Any) -> bool:
    is_closed = getattr(conn, "is_closed", None)
    return bool(is_closed()) if callable(is_closed) else bool(getattr(conn, "closed", False))


class _Bridge:
    """What a pool and the pools ``recreate()`` makes from it share: the database, the
    SQLAlchemy pool that runs connect events now, and each connection's SQLAlchemy side
    (the DBAPI object SQLAlchemy sees, and the record's ``info`` dict)."""

    def __init__(self, user_configure: Callable[[Any], object] | None) -> None:
        self.user_configure = user_configure
        self.sa_pool: PoolkeeperPool | None = None
        self.sides: dict[Any, tuple[Any, dict[Any, Any]]] = {}

    def set_up(self, conn: Any) -> None:
        """SQLAlchemy's connect-time work on a connection poolkeeper just opened (or
        reset): the dialect's setup and the ``connect`` listeners, through a record
        whose creator hands over ``conn``."""
        sa_pool = self.sa_pool
        if sa_pool is None:
            raise PoolError("the SQLAlchemy pool was not set up; use create_engine()")
        rec = _ConnectionRecord(sa_pool, connect=False)
        rec.__dict__["_pk_fresh"] = conn
        dbapi_conn = rec.get_connection()  # runs first_connect and connect listeners
        sa_pool._pk_settle(dbapi_conn)
        # Single dict operations, no lock: a lock held by an opener thread at fork()
        # would stay held in the child.
        sides = self.sides
        if len(sides) > 2 * sa_pool._pk_max_size():
            # Connections poolkeeper closed (retired, failed a check) are done with.
            for old in [c for c in list(sides) if _is_closed(c)]:
                sides.pop(old, None)
        sides[conn] = (dbapi_conn, rec.info)


class PoolkeeperPool(Pool):
    """A ``sqlalchemy.pool.Pool`` that borrows from a poolkeeper :class:`~poolkeeper.Database`.

    Build engines with :func:`create_engine` rather than by hand. ``dsn`` and
    ``settings`` are the database's (``min_size``, ``max_size``, ``timeout``,
    ``driver``, ``configure``...); ``name`` is its ``Database`` name (default
    ``sqlalchemy-N``, one per pool made). ``pre_ping`` and ``recycle`` are refused
    (poolkeeper checks and retires connections itself).
    """

    _pk_async = False

    def __init__(
        self,
        creator: Any = None,
        *,
        dsn: Any = None,
        name: str | None = None,
        settings: Mapping[str, Any] | None = None,
        pre_ping: bool = False,
        recycle: int = -1,
        _pk_bridge: _Bridge | None = None,
        _pk_db: Any = None,
        **pool_kwargs: Any,
    ) -> None:
        if pre_ping:
            raise ConfigurationError(f"pool_pre_ping: {_REFUSED_ENGINE_ARGS['pool_pre_ping']}")
        if recycle != -1:
            raise ConfigurationError(f"pool_recycle: {_REFUSED_ENGINE_ARGS['pool_recycle']}")
        creator_fn: Any = self._pk_creator
        super().__init__(creator_fn, **pool_kwargs)
        if _pk_bridge is None:
            options = dict(settings or {})
            _pk_bridge = _Bridge(options.pop("configure", None))
            options["configure"] = self._pk_configure_hook(_pk_bridge)
            facade = AsyncDatabase if self._pk_async else Database
            # Made now, opened at the first checkout: by then create_engine() has added
            # the dialect's connect listeners that configure= must run.
            _pk_db = facade(name or f"sqlalchemy-{next(_names)}", dsn, **options)
        self._pk_bridge = _pk_bridge
        self._pk_db = _pk_db
        _pk_bridge.sa_pool = self

    @property
    def database(self) -> Any:
        """The poolkeeper ``Database`` (``AsyncDatabase`` for async engines) behind it."""
        return self._pk_db

    # -- poolkeeper side: borrowing, returning, configure= -------------------------------

    @staticmethod
    def _pk_configure_hook(bridge: _Bridge) -> Callable[[Any], object]:
        def configure(conn: Any) -> None:
            if bridge.user_configure is not None:
                bridge.user_configure(conn)
            bridge.set_up(conn)

        return configure

    def _pk_borrow(self) -> Any:
        return self._pk_db.get_connection()

    def _pk_release(self, conn: Any) -> None:
        self._pk_db.release_connection(conn)

    def _pk_max_size(self) -> int:
        return int(self._pk_db.config.max_size)

    def _pk_settle(self, dbapi_conn: Any) -> None:
        """Leave the connection idle after the connect listeners: what they left in a
        transaction is per-session setup, so it is committed."""
        conn = self._dialect.get_driver_connection(dbapi_conn)
        status = getattr(getattr(conn, "info", None), "transaction_status", None)
        if status is not None and status != 0:  # psycopg 3 and psycopg2: not IDLE
            conn.commit()

    # -- SQLAlchemy side -----------------------------------------------------------------

    def _pk_creator(self, connection_record: Any) -> Any:
        """The pool's creator: hands over the connection configure= is setting up; in a
        checkout whose connection SQLAlchemy invalidated, borrows a replacement."""
        fresh = connection_record.__dict__.pop("_pk_fresh", None)
        if fresh is not None:
            return self._pk_adapt(fresh)
        old = connection_record.__dict__.pop("_pk_conn", None)
        if old is not None:
            self._pk_release(old)
        conn = self._pk_borrow()
        connection_record.__dict__["_pk_conn"] = conn
        return self._pk_side(conn)[0]

    def _pk_adapt(self, conn: Any) -> Any:
        """The DBAPI object SQLAlchemy sees for a driver connection."""
        return conn

    def _pk_side(self, conn: Any) -> tuple[Any, dict[Any, Any]]:
        side = self._pk_bridge.sides.get(conn)
        if side is None:
            # Not set up through configure= (cannot happen unless the bridge was
            # replaced): do it now.
            self._pk_set_up_now(conn)
            side = self._pk_bridge.sides[conn]
        return side

    def _pk_set_up_now(self, conn: Any) -> None:
        self._pk_bridge.set_up(conn)

    def _do_get(self) -> ConnectionPoolEntry:
        conn = self._pk_borrow()
        try:
            dbapi_conn, info = self._pk_side(conn)
        except BaseException:
            self._pk_release(conn)
            raise
        rec = _ConnectionRecord(self, connect=False)
        rec.dbapi_connection = dbapi_conn
        rec.starttime = time.time()
        rec.__dict__["info"] = info
        rec.__dict__["_pk_conn"] = conn
        return rec

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        conn = record.__dict__.pop("_pk_conn", None)
        if conn is None:
            return
        if record.dbapi_connection is None and not _is_closed(conn):
            # detach(): the connection left SQLAlchemy, still open. poolkeeper counts it
            # as borrowed until it is closed and dropped; housekeeping then frees the slot.
            _log.warning(
                "a connection was detached from the SQLAlchemy pool; poolkeeper counts it "
                "as borrowed until it is closed and dropped"
            )
            return
        self._pk_release(conn)

    def _invalidate(
        self, connection: Any, exception: BaseException | None = None, _checkin: bool = True
    ) -> None:
        # SQLAlchemy calls this when a statement failed with a disconnect error. It would
        # mark every older connection for reconnection at its next checkout; the
        # poolkeeper equivalent is to check each idle connection before it is lent.
        self._pk_db.pool._note_server_gone()
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    def recreate(self) -> PoolkeeperPool:
        """A pool over the same poolkeeper database (``engine.dispose()`` calls this)."""
        return type(self)(
            self._creator,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
            _pk_bridge=self._pk_bridge,
            _pk_db=self._pk_db,
        )

    def dispose(self) -> None:
        """Replace every connection: idle ones now, borrowed ones when returned
        (poolkeeper's ``drain()``)."""
        self._pk_db.drain()

    def status(self) -> str:
        """The poolkeeper pool's size, idle, in use and waiting counts."""
        try:
            stats = self._pk_db.stats()
        except PoolError as exc:
            return f"poolkeeper pool {self._pk_db.name!r}: {exc}"
        return (
            f"poolkeeper pool {stats.name!r}: size={stats.size} (min {stats.min_size}, "
            f"max {stats.max_size}), idle={stats.idle}, in use={stats.in_use}, "
            f"waiting={stats.waiting}, timeouts={stats.timeouts}"
        )


class PoolkeeperAsyncPool(PoolkeeperPool):
    """The same over an :class:`~poolkeeper.AsyncDatabase`, for ``AsyncEngine``:
    borrowing and returning are awaited from SQLAlchemy's greenlet."""

    _pk_async = True
    _is_asyncio = True

    @staticmethod
    def _pk_configure_hook(bridge: _Bridge) -> Callable[[Any], object]:
        async def configure(conn: Any) -> None:
            if bridge.user_configure is not None:
                result = bridge.user_configure(conn)
                if hasattr(result, "__await__"):
                    await result
            await greenlet_spawn(bridge.set_up, conn)

        return configure

    def _pk_borrow(self) -> Any:
        return await_only(self._pk_db.get_connection())

    def _pk_release(self, conn: Any) -> None:
        try:
            await_only(self._pk_db.release_connection(conn))
        except sqlalchemy.exc.MissingGreenlet:
            # Garbage collection of a connection never returned: no await is possible
            # here. The connection is unreferenced now; poolkeeper's housekeeping
            # finds the lost slot and frees it.
            _log.warning("a connection was garbage collected without being returned")

    def dispose(self) -> None:
        """Replace every connection of this event loop's pool (``drain()``)."""
        await_only(self._pk_db.drain())

    def _pk_adapt(self, conn: Any) -> Any:
        async def given(*args: Any, **kwargs: Any) -> Any:
            return conn

        dialect: Any = self._dialect
        return dialect.loaded_dbapi.connect(async_creator_fn=given)

    def _pk_settle(self, dbapi_conn: Any) -> None:
        conn = self._dialect.get_driver_connection(dbapi_conn)
        status = getattr(getattr(conn, "info", None), "transaction_status", None)
        if status is not None and status != 0:  # psycopg 3 async
            await_only(conn.commit())
        # asyncpg is in autocommit outside an explicit transaction.


def _engine_url(dialect: str, dsn: Any) -> URL:
    """The engine's URL: the dialect, and where it goes for display (never a password)."""
    try:
        params = parse_conninfo(dsn) if isinstance(dsn, str) else {}
    except Exception:
        params = {}
    port = params.get("port")
    return URL.create(
        dialect,
        username=params.get("user"),
        host=params.get("host"),
        port=int(port) if port and str(port).isdigit() else None,
        database=params.get("dbname"),
    )


def _check_engine_args(engine: Mapping[str, Any]) -> None:
    for key, hint in _REFUSED_ENGINE_ARGS.items():
        if key in engine:
            raise ConfigurationError(f"engine: {key} is not for a poolkeeper engine; {hint}")


def _engine_parts(
    pool_class: type[PoolkeeperPool],
    dialects: Mapping[str, str],
    kind: str,
    *,
    dsn: Any,
    name: str | None,
    engine: Mapping[str, Any] | None,
    settings: dict[str, Any],
) -> tuple[URL, PoolkeeperPool, dict[str, Any]]:
    """What both engine factories pass SQLAlchemy: the URL for the driver's dialect,
    the pool (taking SQLAlchemy's pool arguments it understands), the other arguments."""
    engine_args = dict(engine or {})
    _check_engine_args(engine_args)
    driver = settings.get("driver", "psycopg")
    if driver not in dialects:
        raise ConfigurationError(
            f"driver: {driver!r} is not {kind} driver SQLAlchemy can use here; "
            f"use one of {sorted(dialects)}"
        )
    pool = pool_class(
        dsn=dsn,
        name=name,
        settings=settings,
        reset_on_return=engine_args.pop("pool_reset_on_return", True),
        echo=engine_args.pop("echo_pool", None),
        logging_name=engine_args.pop("pool_logging_name", None),
    )
    return _engine_url(dialects[driver], dsn), pool, engine_args


def create_engine(
    dsn: Any = None,
    *,
    name: str | None = None,
    engine: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Engine:
    """A SQLAlchemy ``Engine`` whose pool is poolkeeper's.

    ``dsn`` and ``settings`` are poolkeeper's (as for :class:`~poolkeeper.Database`:
    ``max_size``, ``timeout``, ``driver="psycopg"`` or ``"psycopg2"``...; without a DSN,
    ``DATABASE_URL`` and libpq's ``PG*`` variables); ``engine`` holds
    ``sqlalchemy.create_engine`` arguments (``echo``, ``isolation_level``...).
    SQLAlchemy's pool arguments are refused, each naming the poolkeeper setting to use.
    """
    url, pool, engine_args = _engine_parts(
        PoolkeeperPool,
        _SYNC_DIALECTS,
        "a sync",
        dsn=dsn,
        name=name,
        engine=engine,
        settings=settings,
    )
    return sqlalchemy.create_engine(url, pool=pool, **engine_args)


def create_async_engine(
    dsn: Any = None,
    *,
    name: str | None = None,
    engine: Mapping[str, Any] | None = None,
    **settings: Any,
) -> AsyncEngine:
    """A SQLAlchemy ``AsyncEngine`` whose pool is poolkeeper's (``driver="psycopg"``,
    the default, or ``"asyncpg"``); arguments as for :func:`create_engine`.

    Each event loop has its own poolkeeper pool (an ``AsyncDatabase``), so the engine
    can be used from ``asyncio.run`` calls and test loops one after another.
    """
    url, pool, engine_args = _engine_parts(
        PoolkeeperAsyncPool,
        _ASYNC_DIALECTS,
        "an asyncio",
        dsn=dsn,
        name=name,
        engine=engine,
        settings=settings,
    )
    return sa_create_async_engine(url, pool=pool, **engine_args)
