"""asyncpg behind the pool's asyncio driver interface (``pip install 'poolkeeper[asyncpg]'``).

asyncpg is not libpq: it reads ``postgresql://`` URLs and keyword arguments but
not libpq's ``key=value`` conninfo, and it has no TCP keepalive or
``tcp_user_timeout`` settings. :func:`asyncpg_connect_args` turns the pool's
resolved conninfo into asyncpg's arguments; the pool's keepalive pings (and
``check="auto"``) are what detect dead connections on this driver.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import operator
import os
import shlex
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

import asyncpg

from poolkeeper.conninfo import parse_conninfo
from poolkeeper.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectSpec, SettingsBaseline
from poolkeeper.drivers.sqlstate import READ_ONLY_SQLSTATE, REPLAY_LAG_SQL, is_server_gone_sqlstate
from poolkeeper.errors import ConfigurationError
from poolkeeper.policy import silence_limit
from poolkeeper.session_state import (
    CHECK,
    KNOWN_VERDICTS,
    REPORTED_PARAMETERS,
    RESET_SQL,
    touches_session,
)

__all__ = ["AsyncpgDriver", "NoAnswerTimeout", "PoolAsyncpgConnection", "asyncpg_connect_args"]

_log = logging.getLogger("poolkeeper.pool")

#: libpq keywords asyncpg understands in a URL's query string (and so in its ``dsn``).
_URL_KEYS = frozenset(
    {
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "service",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)
#: libpq keywords that only make sense to libpq's own socket handling: asyncpg has
#: no equivalent, so they are dropped (the pool's pings cover dead-peer detection).
_LIBPQ_ONLY = frozenset(
    {
        "hostaddr",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "channel_binding",
        "gssencmode",
        "gssdelegation",
        "require_auth",
        "requiressl",
        "sslcompression",
        "sslsni",
        "sslcertmode",
        "load_balance_hosts",
        "fallback_application_name",
        "replication",
        "requirepeer",
    }
)


def _options_to_settings(options: str) -> dict[str, str]:
    """libpq's ``options`` ("-c name=value --name=value ...") as server settings."""
    settings: dict[str, str] = {}
    tokens = shlex.split(options)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "-c" and i + 1 < len(tokens):
            pair = tokens[i + 1]
            i += 2
        elif token.startswith(("-c", "--")):
            pair = token[2:]
            i += 1
        else:
            raise ConfigurationError(
                f"dsn: options={options!r} cannot be passed to asyncpg; use '-c name=value' "
                "pairs, or server_settings in connect_kwargs"
            )
        name, sep, value = pair.partition("=")
        if not sep:
            raise ConfigurationError(f"dsn: options entry {pair!r} is not name=value")
        settings[name.replace("-", "_")] = value
    return settings


def asyncpg_connect_args(spec: ConnectSpec) -> tuple[str | None, dict[str, Any]]:
    """``(dsn, kwargs)`` for :func:`asyncpg.connect`, built from the pool's connect spec.

    Precedence as with libpq: pool defaults < the user's conninfo < the user's
    keyword arguments. ``application_name`` and ``options`` become
    ``server_settings`` (``PGAPPNAME``, then ``fallback_application_name``, name the
    application when neither the conninfo nor the keywords do); ``connect_timeout``
    becomes asyncpg's ``timeout``.
    """
    server_settings: dict[str, str] = {}
    if spec.statement_timeout is not None:
        server_settings["statement_timeout"] = str(round(spec.statement_timeout * 1000))
    if spec.idle_in_transaction_timeout is not None:
        ms = round(spec.idle_in_transaction_timeout * 1000)
        server_settings["idle_in_transaction_session_timeout"] = str(ms)
    if spec.read_only:
        server_settings["default_transaction_read_only"] = "on"
    kwargs: dict[str, Any] = {"timeout": spec.connect_timeout}
    if spec.pgbouncer:
        # Transaction-mode PgBouncer moves us between server sessions: no cached
        # server-side prepared statements, or the next transaction may not find them.
        kwargs["statement_cache_size"] = 0
    given = dict(spec.kwargs)
    fallback = given.pop("fallback_application_name", None)
    dsn = _apply_conninfo(spec.conninfo, server_settings, kwargs)
    _apply_kwargs(given, server_settings, kwargs)
    # libpq's order, which asyncpg does not follow by itself: application_name from the
    # conninfo or keywords, then PGAPPNAME, then the fallback (the pool's name).
    appname = os.environ.get("PGAPPNAME") or fallback
    if appname and "application_name" not in server_settings:
        server_settings["application_name"] = str(appname)
    if server_settings:
        kwargs["server_settings"] = server_settings
    return dsn, kwargs


def _apply_shared_key(
    key: str, value: Any, server_settings: dict[str, str], kwargs: dict[str, Any]
) -> bool:
    """The keys a conninfo and keyword arguments both translate the same way; False
    for any other key."""
    if key in ("application_name", "client_encoding"):
        server_settings[key] = str(value)
    elif key == "options":
        server_settings.update(_options_to_settings(str(value)))
    elif key == "connect_timeout":
        kwargs["timeout"] = float(value)
    else:
        return False
    return True


def _apply_conninfo(
    conninfo: str, server_settings: dict[str, str], kwargs: dict[str, Any]
) -> str | None:
    """Sort the conninfo's parameters into asyncpg's URL, server settings and keyword
    arguments; return the URL (None if nothing goes into one)."""
    params = parse_conninfo(conninfo)
    if "hostaddr" in params and "host" not in params:
        params["host"] = params["hostaddr"]
    url_params: dict[str, str] = {}
    for key, value in params.items():
        if value is None or _apply_shared_key(key, value, server_settings, kwargs):
            continue
        if key in _URL_KEYS:
            url_params[key] = str(value)
        elif key in _LIBPQ_ONLY:
            _log.debug("asyncpg: ignoring libpq-only connection parameter %r", key)
        else:
            # Anything else in a conninfo is a server setting to asyncpg, as in its URLs.
            server_settings[key] = str(value)
    return "postgresql://?" + urlencode(url_params) if url_params else None


#: Keyword arguments whose libpq name asyncpg spells differently.
_KWARG_NAMES = {"dbname": "database", "sslmode": "ssl"}


def _apply_kwargs(
    given: Mapping[str, Any], server_settings: dict[str, str], kwargs: dict[str, Any]
) -> None:
    """The user's keyword arguments, translated where asyncpg differs from libpq."""
    for key, value in given.items():
        if _apply_shared_key(key, value, server_settings, kwargs):
            continue
        if key == "server_settings":
            server_settings.update(value or {})
        elif key == "autocommit" and value:
            # asyncpg is always in autocommit outside an explicit transaction.
            continue
        else:
            kwargs[_KWARG_NAMES.get(key, key)] = value


_F = TypeVar("_F", bound=Callable[..., Any])


class NoAnswerTimeout(asyncio.TimeoutError):
    """A statement heard nothing from the server for well past ``statement_timeout``:
    the server or the network path to it is not responding (the no-answer guard).

    A ``TimeoutError``, as asyncpg's own ``command_timeout`` raises. Returned through
    ``pool.connection()``, the connection is discarded (and the pool's idle ones are
    checked before their next loan); handed back with ``putconn``, it is kept only
    if it is idle again, asyncpg's cancel of the statement having been answered."""


def _no_answer(limit: float) -> NoAnswerTimeout:
    return NoAnswerTimeout(
        f"no answer from the server for {limit:.1f}s, although statement_timeout "
        "would have ended the statement by now; the server or the network path to "
        "it is not responding"
    )


def _judging(base: _F) -> _F:
    """``base`` (an ``asyncpg.Connection`` method taking SQL text first) that first
    marks the connection dirty when that SQL may change the session.

    It returns asyncpg's own coroutine (or object) rather than awaiting it, so
    judging adds no coroutine frame. For the methods that do not run through
    :meth:`PoolAsyncpgConnection._execute`, which judges the others inline.
    """

    def method(self: PoolAsyncpgConnection, query: Any, *args: Any, **kwargs: Any) -> Any:
        if self._pk_dirty is not True:
            self._note(touches_session(query))
        return base(self, query, *args, **kwargs)

    method.__name__ = base.__name__
    method.__qualname__ = f"PoolAsyncpgConnection.{base.__name__}"
    method.__doc__ = base.__doc__
    return cast(_F, method)


class PoolAsyncpgConnection(asyncpg.Connection):
    """``asyncpg.Connection`` that marks itself dirty when SQL may change the session
    (every method that sends SQL text: :meth:`_execute`, :func:`_judging`)."""

    __slots__ = (
        "_pk_answer_timeout",
        "_pk_baseline",
        "_pk_client_dirty",
        "_pk_codecs",
        "_pk_connected",
        "_pk_dirty",
        "_pk_introspected",
        "_pk_read_settings",
        "_pk_reported",
        "_pk_settings",
        "_pk_silence_limit",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # False, CHECK or True: see poolkeeper.session_state.
        self._pk_dirty: int = False
        # A borrower added or removed a listener or logger, or changed a type codec:
        # see AsyncpgDriver.restore_client_state.
        self._pk_client_dirty = False
        self._pk_codecs = False
        # asyncpg's type introspection changed the session's jit: see _introspect_types.
        self._pk_introspected = False
        self._pk_baseline: _Listeners | None = None
        self._pk_connected: _Listeners | None = None
        # How long the pool's own statements (ping, ROLLBACK, DISCARD ALL) wait for an
        # answer: the pool's connect_timeout.
        self._pk_answer_timeout = 10.0
        # The no-answer guard's limit (seconds), or None: see AsyncpgDriver.connect.
        self._pk_silence_limit: float | None = None
        # The reported settings (ParameterStatus) a borrower must find; where asyncpg
        # keeps them as they are now, and how to read them: see _settings_source.
        self._pk_reported: object = ()
        self._pk_settings: Any = None
        self._pk_read_settings: Callable[[Any], object] = _no_settings

    # fetch, fetchval, fetchrow and execute with arguments all run through _execute.
    async def _execute(
        self,
        query: Any,
        args: Any,
        limit: int,
        timeout: float | None,
        *,
        return_status: bool = False,
        ignore_custom_codec: bool = False,
        record_class: Any = None,
    ) -> Any:
        """asyncpg's ``_execute`` (one statement, by the extended protocol), with the
        statement judged first and, on a pool with ``statement_timeout``, the
        no-answer guard: unless the caller gave a ``timeout``, the silence limit is
        asyncpg's, and running past it raises :class:`NoAnswerTimeout`.

        asyncpg's own body, written out with the judging inline rather than wrapped:
        these are the queries of nearly every borrow, and a wrapper's frame cost
        more than the judging (see docs/benchmarks.md). :func:`_check_layout`
        makes sure at import that asyncpg still has the parts it calls.
        """
        guard = None
        if self._pk_dirty is not True:
            try:
                verdict = KNOWN_VERDICTS[query]
            except (KeyError, TypeError):
                verdict = touches_session(query)
            if verdict:
                self._pk_dirty = verdict
            # A session that changed its own settings may have raised its
            # statement_timeout: no client-side limit from then on. (A function's
            # set_config() is not seen: see docs/reliability.md.)
            if timeout is None and verdict is not True:
                timeout = guard = self._pk_silence_limit
        with self._stmt_exclusive_section:  # type: ignore[attr-defined]
            try:
                result, _ = await self._Connection__execute(  # type: ignore[attr-defined]
                    query,
                    args,
                    limit,
                    timeout,
                    return_status=return_status,
                    record_class=record_class,
                    ignore_custom_codec=ignore_custom_codec,
                )
            except asyncio.TimeoutError as exc:
                if guard is None:
                    raise
                raise _no_answer(guard) from exc
        return result

    async def _introspect_types(self, typeoids: Any, timeout: float | None) -> Any:
        """asyncpg's ``_introspect_types``, which runs when a statement meets a type this
        connection has no codec for yet (an enum, a domain, a composite...).

        On a server with JIT, asyncpg turns ``jit`` off for its catalog query with
        ``set_config('jit', 'off', false)`` and back with another: a session setting
        either way, and left off when the query is interrupted (a caller's ``timeout``
        running out in it). ``jit`` is not a setting the server reports, so only a
        reset clears it: the return makes one. Through the client-side flag, not
        ``_pk_dirty``, so the no-answer guard does not stand aside for the rest of the
        borrow: the session's ``statement_timeout`` is untouched. Rare: once per type
        and connection, asyncpg keeps the codecs it found.
        """
        if self._server_caps.jit:  # type: ignore[attr-defined]
            self._pk_client_dirty = self._pk_introspected = True
        return await asyncpg.Connection._introspect_types(self, typeoids, timeout)  # type: ignore[attr-defined]

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """asyncpg's ``execute``. With arguments it runs through :meth:`_execute`;
        without, as a simple query that may be a script of several statements: judged
        here, and with no client-side limit. Returns asyncpg's own coroutine."""
        if not args and self._pk_dirty is not True:
            self._note(touches_session(query))
        return asyncpg.Connection.execute(self, query, *args, **kwargs)

    fetchmany = _judging(asyncpg.Connection.fetchmany)
    cursor = _judging(asyncpg.Connection.cursor)
    prepare = _judging(asyncpg.Connection.prepare)

    def executemany(self, command: str, *args: Any, **kwargs: Any) -> Any:
        # Spelled out: its first parameter is called ``command``, not ``query``.
        self._note(touches_session(command))
        return asyncpg.Connection.executemany(self, command, *args, **kwargs)

    # The COPY methods build their statement from their arguments; what a borrower
    # can put in it is judged (a query's text, a raw WHERE clause). Table and column
    # names are quoted by asyncpg.
    def copy_from_query(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._note(touches_session(query))
        return asyncpg.Connection.copy_from_query(self, query, *args, **kwargs)

    def copy_to_table(self, table_name: str, **kwargs: Any) -> Any:
        self._judge_where(kwargs.get("where"))
        return asyncpg.Connection.copy_to_table(self, table_name, **kwargs)

    def copy_records_to_table(self, table_name: str, **kwargs: Any) -> Any:
        self._judge_where(kwargs.get("where"))
        return asyncpg.Connection.copy_records_to_table(self, table_name, **kwargs)

    def _judge_where(self, where: object) -> None:
        if where is not None:
            text = f"SELECT 1 WHERE {where}" if isinstance(where, str) else None
            self._note(touches_session(text))

    def _note(self, verdict: int) -> None:
        """Raise the flag to ``verdict`` (False < CHECK < True)."""
        if verdict and self._pk_dirty is not True:
            self._pk_dirty = verdict

    # -- client-side state a borrower can change (put back on return) -------------------

    async def add_listener(self, channel: str, callback: Any) -> None:
        """asyncpg's ``add_listener``; the listener is removed (and the session's
        LISTEN reset) on return."""
        self._pk_client_dirty = True
        await asyncpg.Connection.add_listener(self, channel, callback)

    async def remove_listener(self, channel: str, callback: Any) -> None:
        """asyncpg's ``remove_listener``; configure='s listeners come back on return."""
        self._pk_client_dirty = True
        await asyncpg.Connection.remove_listener(self, channel, callback)

    def add_log_listener(self, callback: Any) -> None:
        """asyncpg's ``add_log_listener``; removed on return."""
        self._pk_client_dirty = True
        asyncpg.Connection.add_log_listener(self, callback)

    def remove_log_listener(self, callback: Any) -> None:
        """asyncpg's ``remove_log_listener``; configure='s come back on return."""
        self._pk_client_dirty = True
        asyncpg.Connection.remove_log_listener(self, callback)

    def add_termination_listener(self, callback: Any) -> None:
        """asyncpg's ``add_termination_listener``; removed on return."""
        self._pk_client_dirty = True
        asyncpg.Connection.add_termination_listener(self, callback)

    def remove_termination_listener(self, callback: Any) -> None:
        """asyncpg's ``remove_termination_listener``; configure='s come back on return."""
        self._pk_client_dirty = True
        asyncpg.Connection.remove_termination_listener(self, callback)

    def add_query_logger(self, callback: Any) -> None:
        """asyncpg's ``add_query_logger``; removed on return, so it never sees the next
        borrower's queries or their arguments."""
        self._pk_client_dirty = True
        asyncpg.Connection.add_query_logger(self, callback)

    def remove_query_logger(self, callback: Any) -> None:
        """asyncpg's ``remove_query_logger``; configure='s come back on return."""
        self._pk_client_dirty = True
        asyncpg.Connection.remove_query_logger(self, callback)

    async def set_type_codec(self, typename: str, **kwargs: Any) -> None:
        """asyncpg's ``set_type_codec``; a connection a borrower changed codecs on is
        discarded on return (asyncpg cannot put the codec before it back exactly)."""
        self._pk_client_dirty = self._pk_codecs = True
        await asyncpg.Connection.set_type_codec(self, typename, **kwargs)

    async def reset_type_codec(self, typename: str, **kwargs: Any) -> None:
        """asyncpg's ``reset_type_codec``; see :meth:`set_type_codec`."""
        self._pk_client_dirty = self._pk_codecs = True
        await asyncpg.Connection.reset_type_codec(self, typename, **kwargs)

    async def set_builtin_type_codec(self, typename: str, **kwargs: Any) -> None:
        """asyncpg's ``set_builtin_type_codec``; see :meth:`set_type_codec`."""
        self._pk_client_dirty = self._pk_codecs = True
        await asyncpg.Connection.set_builtin_type_codec(self, typename, **kwargs)


#: asyncpg's methods that must reach its ``_execute`` for their statement to be judged.
_THROUGH_EXECUTE = ("fetch", "fetchval", "fetchrow", "execute")


def _calls_execute(method: object) -> bool:
    code = getattr(method, "__code__", None)
    return code is not None and "_execute" in code.co_names


def _check_layout() -> None:
    """Make sure asyncpg still runs its one-statement queries through ``_execute`` as
    :meth:`PoolAsyncpgConnection._execute` expects (asyncpg 0.29 to 0.32 do), and
    introspects types where :meth:`PoolAsyncpgConnection._introspect_types` sees it;
    otherwise those queries would run unjudged, or fail."""
    base = asyncpg.Connection
    execute = base.__dict__.get("_execute")
    introspect = base.__dict__.get("_introspect_types")
    params = [] if execute is None else list(inspect.signature(execute).parameters)
    if (
        params[:5] != ["self", "query", "args", "limit", "timeout"]
        or not {"return_status", "ignore_custom_codec", "record_class"} <= set(params)
        or not hasattr(base, "_Connection__execute")
        or "_stmt_exclusive_section" not in base.__slots__
        # A public method that stopped calling _execute would run its SQL unjudged.
        or not all(_calls_execute(getattr(base, name, None)) for name in _THROUGH_EXECUTE)
        or introspect is None
        or list(inspect.signature(introspect).parameters) != ["self", "typeoids", "timeout"]
        or "_server_caps" not in base.__slots__
    ):
        raise ConfigurationError(
            f"driver: asyncpg {asyncpg.__version__} no longer runs its queries where "
            "poolkeeper judges them; install the asyncpg version poolkeeper supports "
            "(pip install -U poolkeeper 'asyncpg>=0.29')"
        )


_check_layout()


def track_prepared_statements() -> None:
    """Judge every run of an ``asyncpg.PreparedStatement`` made on a pool connection.

    ``conn.prepare()`` is judged when called, but the object it returns runs its
    statement later by arguments alone, possibly in a later borrow: SQLAlchemy's
    asyncpg dialect keeps them per connection and runs a cached one for every
    repeated query. A verdict that asked for a settings check passed at the return
    that followed the prepare; the same statement with other arguments may change
    the session. Every public method of the statement first calls
    ``_check_conn_validity`` (asyncpg's ``connresource.guarded``), which is wrapped
    here once per process; statements of connections that are not the pool's pay
    one attribute lookup. Idempotent.
    """
    cls = asyncpg.prepared_stmt.PreparedStatement
    base = cls.__dict__.get("_check_conn_validity")
    if base is None:
        # Prepared statements would run untracked, and session state would leak unseen.
        raise ConfigurationError(
            f"driver: asyncpg {asyncpg.__version__} no longer checks its prepared "
            "statements where poolkeeper tracks them; install the asyncpg version "
            "poolkeeper supports (pip install -U poolkeeper 'asyncpg>=0.29')"
        )
    if getattr(base, "_pk_tracks", False):
        return

    def _check_conn_validity(self: Any, meth_name: str) -> None:
        base(self, meth_name)
        conn = self._connection
        if getattr(conn, "_pk_dirty", True) is not True:
            query = self._query
            try:
                verdict = KNOWN_VERDICTS[query]
            except (KeyError, TypeError):
                verdict = touches_session(query)
            if verdict:
                conn._pk_dirty = verdict

    _check_conn_validity._pk_tracks = True  # type: ignore[attr-defined]
    setattr(cls, "_check_conn_validity", _check_conn_validity)  # noqa: B010  (not in asyncpg's type stubs)


track_prepared_statements()


def _no_settings(source: Any) -> object:
    """What a connection reads before its first baseline: nothing."""
    return ()


#: The getters :func:`_settings_source` hands out, one per kind and list of names.
_READERS: dict[tuple[Any, tuple[str, ...]], Callable[[Any], object]] = {}


def _settings_source(conn: PoolAsyncpgConnection) -> tuple[Any, Callable[[Any], object]]:
    """Where asyncpg keeps the settings the server reports, and a getter that reads
    those of :data:`REPORTED_PARAMETERS` this server reports in one C call.

    asyncpg updates one dict as ParameterStatus messages arrive, and shows it only
    through a ``__getattr__`` that costs about half a microsecond a name (a failed
    attribute lookup first): read from the dict, the names cost a tenth of that, on
    the return of every connection flagged for a settings check. The dict is found
    among the settings object's references (:func:`_live_settings`); if this
    asyncpg keeps them elsewhere, the attributes are read instead.
    """
    settings = conn._protocol.get_settings()  # type: ignore[attr-defined]
    names = tuple(n for n in REPORTED_PARAMETERS if getattr(settings, n, None) is not None)
    live = _live_settings(conn)
    source, kind = (settings, operator.attrgetter) if live is None else (live, operator.itemgetter)
    reader = _READERS.get((kind, names))
    if reader is None:
        # (One name would give a value rather than a tuple: compared alike.)
        reader = _READERS[(kind, names)] = kind(*names) if names else _no_settings
    return source, reader


def _live_settings(conn: PoolAsyncpgConnection) -> dict[str, str] | None:
    """The dict in which asyncpg records every setting the server reports, or None if
    this asyncpg keeps them some other way. Taken only if it holds what the
    attributes say."""
    settings = conn._protocol.get_settings()  # type: ignore[attr-defined]
    for found in gc.get_referents(settings):
        if (
            type(found) is dict
            and "server_version" in found
            and all(found.get(key) == getattr(settings, key, None) for key in REPORTED_PARAMETERS)
        ):
            return found
    return None


#: (LISTEN callbacks by channel, log listeners, termination listeners, query loggers)
_Listeners = tuple[dict[str, set[Any]], set[Any], set[Any], set[Any]]


#: No listener or logger at all, as nearly every connection is: shared, and never
#: changed (restore_client_state copies from a baseline, never into it).
_NO_LISTENERS: _Listeners = ({}, set(), set(), set())


def _listeners(conn: PoolAsyncpgConnection) -> _Listeners:
    if not (
        conn._listeners  # type: ignore[attr-defined]
        or conn._log_listeners  # type: ignore[attr-defined]
        or conn._termination_listeners  # type: ignore[attr-defined]
        or conn._query_loggers  # type: ignore[attr-defined]
    ):
        return _NO_LISTENERS
    return (
        {channel: set(callbacks) for channel, callbacks in conn._listeners.items()},  # type: ignore[attr-defined]
        set(conn._log_listeners),  # type: ignore[attr-defined]
        set(conn._termination_listeners),  # type: ignore[attr-defined]
        set(conn._query_loggers),  # type: ignore[attr-defined]
    )


def _return_state(conn: PoolAsyncpgConnection) -> object:
    """False when ``conn`` is idle, open and clean, CHECK when it is that but for a
    pending settings check, else True: one frame, no tuple, on every return.

    Reads in one place what :meth:`AsyncpgDriver.status` and
    :meth:`AsyncpgDriver.session_dirty` decide apart (they run only when this is true).
    """
    # _top_xact: a Transaction the borrower started and ended by SQL (COMMIT sent as a
    # statement) stays asyncpg's top transaction, so the next borrower's
    # transaction() would send SAVEPOINT outside any transaction.
    if conn._pk_client_dirty or conn._aborted or conn._top_xact is not None:  # type: ignore[attr-defined]
        return True
    protocol: Any = conn._protocol  # type: ignore[attr-defined]
    # A query cancelled mid-flight leaves a cancel request racing the server.
    if not protocol.is_connected() or protocol._is_cancelling() or protocol.is_in_transaction():
        return True
    return conn._pk_dirty  # False, CHECK (check_state) or True


class AsyncpgDriver(SettingsBaseline):
    """asyncpg behind the pool's driver interface."""

    name = "asyncpg"
    #: ``return_state`` is a plain "needs a look" flag on this driver, or CHECK for an
    #: idle connection whose only mark is a pending settings check.
    clean_state = False
    check_state = CHECK
    return_state = staticmethod(_return_state)

    def mark_clean(self, conn: PoolAsyncpgConnection) -> None:
        """Forget the session-dirty flag."""
        conn._pk_dirty = False

    async def connect(self, spec: ConnectSpec) -> PoolAsyncpgConnection:
        """Open a connection whose queries track session changes."""
        dsn, kwargs = asyncpg_connect_args(spec)
        conn: PoolAsyncpgConnection = await asyncpg.connect(
            dsn, connection_class=PoolAsyncpgConnection, **kwargs
        )
        conn._pk_answer_timeout = spec.connect_timeout
        # The no-answer guard, unless the caller chose asyncpg's own command_timeout.
        if spec.statement_timeout is not None and kwargs.get("command_timeout") is None:
            conn._pk_silence_limit = silence_limit(spec.statement_timeout)
        conn._pk_settings, conn._pk_read_settings = _settings_source(conn)
        self.record_baseline(conn)
        self.save_client_state(conn)
        return conn

    def status(self, conn: PoolAsyncpgConnection) -> int:
        """IDLE / IN_TRANSACTION / BROKEN from asyncpg's client-side state."""
        protocol: Any = conn._protocol  # type: ignore[attr-defined]
        # A query cancelled mid-flight leaves a cancel request racing the server.
        if conn.is_closed() or protocol._is_cancelling():
            return BROKEN
        return IN_TRANSACTION if protocol.is_in_transaction() else IDLE

    async def rollback(self, conn: PoolAsyncpgConnection) -> None:
        """Roll back the open transaction, and forget an unmanaged ``Transaction`` object.

        Waits at most ``connect_timeout`` for the answer, as the ping does: a healthy
        server answers at once, and a return must not hang on one that stopped
        answering (the connection is then discarded)."""
        # Otherwise the next borrower's conn.transaction() would think it is nested.
        conn._top_xact = None  # type: ignore[attr-defined]
        await asyncpg.Connection.execute(conn, "ROLLBACK", timeout=conn._pk_answer_timeout)

    async def replay_lag(self, conn: PoolAsyncpgConnection) -> float | None:
        """Seconds this standby's replay is behind (0 on a primary or a caught-up
        standby), None when the server cannot tell; one round trip."""
        value = await asyncpg.Connection.fetchval(
            conn, REPLAY_LAG_SQL, timeout=conn._pk_answer_timeout
        )
        return None if value is None else float(value)

    async def ping(self, conn: PoolAsyncpgConnection, timeout: float | None = None) -> None:
        """``SELECT 1`` as a simple query: one round trip.

        Waits at most ``connect_timeout`` (or ``timeout``, if shorter) for the answer.
        Not the empty query the psycopg drivers send: asyncpg cannot take the server's
        answer to one (EmptyQueryResponse has no command tag) and raises AttributeError.
        """
        if conn.is_closed():
            raise asyncpg.exceptions.InterfaceError("connection is closed")
        limit = conn._pk_answer_timeout
        if timeout is not None and timeout < limit:
            limit = max(timeout, 0.001)
        await asyncpg.Connection.execute(conn, "SELECT 1", timeout=limit)

    async def close(self, conn: PoolAsyncpgConnection) -> None:
        """Close gracefully if the server answers within 2 s, else drop the socket."""
        try:
            await conn.close(timeout=2.0)
        except Exception:
            conn.terminate()

    def read_settings(self, conn: PoolAsyncpgConnection) -> object:
        """The settings this server reports (ParameterStatus), as asyncpg holds them
        now: one C-level read (see :func:`_settings_source`)."""
        return conn._pk_read_settings(conn._pk_settings)

    def save_client_state(self, conn: PoolAsyncpgConnection) -> None:
        """Record listeners and loggers (after configure=) as the baseline; the first
        call, from :meth:`connect`, also as the connection came. Codecs set so far are
        configure's, and so the baseline too."""
        conn._pk_baseline = _listeners(conn)
        if conn._pk_connected is None:
            conn._pk_connected = conn._pk_baseline
        conn._pk_client_dirty = conn._pk_codecs = conn._pk_introspected = False

    def restore_client_state(self, conn: PoolAsyncpgConnection, as_connected: bool = False) -> bool:
        """Put the listeners and loggers back as configure= left them; False (discard)
        if a borrower changed a type codec."""
        if conn._top_xact is not None:  # type: ignore[attr-defined]
            # The borrower's Transaction object, idle by SQL: it cannot be put back, and
            # could still end a transaction of the next borrower.
            return False
        if not (conn._pk_client_dirty or as_connected):
            return True
        if conn._pk_codecs:
            return False
        if conn._pk_introspected:
            # asyncpg's introspection set jit for the session (see _introspect_types).
            conn._pk_dirty = True
            conn._pk_introspected = False
        saved = conn._pk_connected if as_connected else conn._pk_baseline
        assert saved is not None
        channels, logs, terminations, loggers = saved
        live: dict[str, set[Any]] = conn._listeners  # type: ignore[attr-defined]
        if live.keys() != channels.keys():
            # LISTEN / UNLISTEN reached the server: DISCARD ALL (then configure=, which
            # listens again) must follow.
            conn._pk_dirty = True
        live.clear()
        live.update({channel: set(callbacks) for channel, callbacks in channels.items()})
        for now, then in (
            (conn._log_listeners, logs),  # type: ignore[attr-defined]
            (conn._termination_listeners, terminations),  # type: ignore[attr-defined]
            (conn._query_loggers, loggers),  # type: ignore[attr-defined]
        ):
            now.clear()
            now.update(then)
        conn._pk_client_dirty = False
        return True

    async def reset_session(self, conn: PoolAsyncpgConnection) -> None:
        """DISCARD ALL, then forget what it invalidated on the client side (waiting at
        most ``connect_timeout``, as :meth:`rollback` does)."""
        await asyncpg.Connection.execute(conn, RESET_SQL, timeout=conn._pk_answer_timeout)
        # DISCARD ALL deallocated asyncpg's cached prepared statements too.
        conn._drop_local_statement_cache()  # type: ignore[attr-defined]
        conn._listeners.clear()  # type: ignore[attr-defined]
        conn._log_listeners.clear()  # type: ignore[attr-defined]
        conn._pk_dirty = False
        self.record_baseline(conn)

    def transaction(self, conn: PoolAsyncpgConnection) -> AbstractAsyncContextManager[Any]:
        """asyncpg's transaction block: BEGIN, then COMMIT or ROLLBACK."""
        return conn.transaction()

    def backend_pid(self, conn: PoolAsyncpgConnection) -> int:
        """The backend's process id."""
        return conn.get_server_pid()

    def is_disconnect(self, exc: BaseException) -> bool:
        """Connection lost, the server silent past the no-answer limit, or a SQLSTATE
        that means the server restarted or was demoted."""
        if isinstance(exc, (asyncpg.exceptions.ConnectionDoesNotExistError, NoAnswerTimeout)):
            return True
        if isinstance(exc, asyncpg.exceptions.InterfaceError):
            return "closed" in str(exc)
        if isinstance(exc, asyncpg.exceptions.PostgresError):
            return is_server_gone_sqlstate(getattr(exc, "sqlstate", None))
        return isinstance(exc, ConnectionError)

    def is_refusal(self, exc: BaseException) -> bool:
        """The server answered the connection attempt with an error (it carries a
        SQLSTATE: 53300, 28P01, 57P03...)."""
        return isinstance(exc, asyncpg.exceptions.PostgresError)

    def is_read_only_error(self, exc: BaseException) -> bool:
        """SQLSTATE 25006: a write in a read-only transaction (or on a standby)."""
        return (
            isinstance(exc, asyncpg.exceptions.PostgresError)
            and getattr(exc, "sqlstate", None) == READ_ONLY_SQLSTATE
        )

    def is_standby(self, conn: PoolAsyncpgConnection) -> bool:
        """True if the server reports it is a hot standby (PostgreSQL 14+ says so
        unasked, in ``in_hot_standby``, which asyncpg keeps among its settings): no
        round trip."""
        return bool(getattr(conn.get_settings(), "in_hot_standby", None) == "on")

    def fileno(self, conn: PoolAsyncpgConnection) -> int:
        """The socket's descriptor, or -1 once closed."""
        try:
            sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]
            return int(sock.fileno()) if sock is not None else -1
        except Exception:
            return -1
