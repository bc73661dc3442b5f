"""Client-side attributes of a psycopg 3 connection (sync and asyncio): what a borrower
can change through psycopg's public API that would otherwise reach the next borrower.

Every such change lands in an attribute psycopg stores on the connection (autocommit,
isolation level, read-only, deferrable, row and cursor factories), in its prepare
manager (``prepare_threshold``, ``prepared_max``), in its handler lists, or in its
adapters map. :class:`ClientStateTracking` notices each of them where it happens and
raises ``_pk_client_dirty``, so that a clean return still costs one C-level attribute
read; only a return with the flag up compares the attributes with the baseline
recorded after ``configure=`` and puts back what differs.

An idle connection holds no state of its own for this: the baseline is one tuple
shared by every connection that recorded an equal one (``drivers.base.shared``), and
a connection whose adapters are psycopg's global ones has no adapters map until
something asks for it, as psycopg itself does.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Generator, Iterable
from typing import Any

from psycopg import postgres, pq
from psycopg._connection_base import BaseConnection
from psycopg.adapt import AdaptersMap
from psycopg.types import TypesRegistry

from poolkeeper.drivers.base import shared

__all__ = ["ClientStateTracking", "restore_client_state", "save_client_state"]

_IDLE = pq.TransactionStatus.IDLE

# Where psycopg keeps what its public setters change (each setter ends in a plain
# attribute store on the connection, which __setattr__ below sees).
_STORED = frozenset(
    {
        "_autocommit",
        "_isolation_level",
        "_read_only",
        "_deferrable",
        "row_factory",
        "cursor_factory",
        "server_cursor_factory",
        "_adapters",
        # A two-phase transaction's xid, set by tpc_begin(): psycopg refuses commit()
        # and rollback() while it is set, even after the transaction ended.
        "_tpc",
    }
)


def _flag(conn: Any) -> None:
    object.__setattr__(conn, "_pk_client_dirty", True)


def _flagging(setter: Callable[[Any, Any], None] | None) -> Callable[[Any, Any], None]:
    assert setter is not None

    def set_and_flag(self: Any, value: Any) -> None:
        _flag(self)
        setter(self, value)

    return set_and_flag


_BASE_THRESHOLD: property = vars(BaseConnection)["prepare_threshold"]
_BASE_MAX: property = vars(BaseConnection)["prepared_max"]


class _TrackedTypes(TypesRegistry):
    """A connection's types registry that tells its connection when a type is added."""

    _pk_owner: Callable[[], Any]
    _pk_changed = False

    def add(self, info: Any) -> None:
        self._pk_changed = True
        owner = self._pk_owner()
        if owner is not None:
            _flag(owner)
        super().add(info)


class _TrackedAdapters(AdaptersMap):
    """A connection's adapters map that tells its connection when a borrower registers
    a dumper, loader or type on it (psycopg copies it into every new cursor)."""

    _pk_owner: Callable[[], Any]
    _pk_changed = False

    def register_dumper(self, cls: Any, dumper: Any) -> None:
        self._pk_changed = True
        owner = self._pk_owner()
        if owner is not None:
            _flag(owner)
        super().register_dumper(cls, dumper)

    def register_loader(self, oid: Any, loader: Any) -> None:
        self._pk_changed = True
        owner = self._pk_owner()
        if owner is not None:
            _flag(owner)
        super().register_loader(oid, loader)


def _tracked_adapters(template: AdaptersMap, conn: Any) -> _TrackedAdapters:
    """A copy-on-write copy of ``template`` that flags ``conn`` when changed."""
    owner = weakref.ref(conn)
    adapters = _TrackedAdapters(template)
    types = _TrackedTypes(template.types)
    types._pk_owner = owner
    adapters.types = types
    adapters._pk_owner = owner
    return adapters


class ClientStateTracking:
    """Mixin for the pool's psycopg connection classes (before ``psycopg.Connection``):
    raises ``_pk_client_dirty`` whenever a client-side attribute changes.

    ``__setattr__`` costs a Python call per attribute store on the connection; psycopg
    stores none per statement (two per ``transaction()`` block), so queries pay nothing.
    """

    _pk_client_dirty: bool = False
    # (attributes, adapters template) after configure=, and as the connection came (None
    # while configure= changed nothing: the same as _pk_baseline); the
    # template is None for psycopg's global adapters (the map is then made on first
    # use, from the global one, as psycopg does). Class defaults, not vars(conn):
    # CPython 3.11+ keeps instance attributes inline until something asks for
    # __dict__, and every attribute read is slower after.
    _pk_baseline: tuple[tuple[Any, ...], AdaptersMap | None] | None = None
    _pk_connected: tuple[tuple[Any, ...], AdaptersMap | None] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _STORED:
            object.__setattr__(self, "_pk_client_dirty", True)

    @property
    def adapters(self) -> AdaptersMap:
        """psycopg's ``adapters``, made on first use from the global map as psycopg makes
        it, but a map that tells the pool when a borrower registers on it."""
        adapters: AdaptersMap | None = self._adapters  # type: ignore[attr-defined]
        if not adapters:
            adapters = _tracked_adapters(postgres.adapters, self)
            object.__setattr__(self, "_adapters", adapters)
        return adapters

    # Kept in psycopg's PrepareManager, not on the connection: flagged here.
    prepare_threshold = property(
        _BASE_THRESHOLD.fget, _flagging(_BASE_THRESHOLD.fset), doc=_BASE_THRESHOLD.__doc__
    )
    prepared_max = property(_BASE_MAX.fget, _flagging(_BASE_MAX.fset), doc=_BASE_MAX.__doc__)

    def add_notice_handler(self, callback: Any) -> None:
        """psycopg's ``add_notice_handler``; the handler is removed on return."""
        _flag(self)
        super().add_notice_handler(callback)  # type: ignore[misc]

    def remove_notice_handler(self, callback: Any) -> None:
        """psycopg's ``remove_notice_handler``; configure's handlers come back on return."""
        _flag(self)
        super().remove_notice_handler(callback)  # type: ignore[misc]

    def add_notify_handler(self, callback: Any) -> None:
        """psycopg's ``add_notify_handler``; the handler is removed on return."""
        _flag(self)
        super().add_notify_handler(callback)  # type: ignore[misc]

    def remove_notify_handler(self, callback: Any) -> None:
        """psycopg's ``remove_notify_handler``; configure's handlers come back on return."""
        _flag(self)
        super().remove_notify_handler(callback)  # type: ignore[misc]


def _snapshot(conn: Any) -> tuple[Any, ...]:
    return (
        conn._autocommit,
        conn._isolation_level,
        conn._read_only,
        conn._deferrable,
        conn.row_factory,
        conn.cursor_factory,
        conn.server_cursor_factory,
        conn._prepared.prepare_threshold,
        conn._prepared.prepared_max,
        tuple(conn._notice_handlers),
        tuple(conn._notify_handlers),
    )


def _all_same(these: Iterable[object], those: Iterable[object]) -> bool:
    these, those = list(these), list(those)
    return len(these) == len(those) and all(map(operator.is_, these, those))


def _is_global_copy(adapters: AdaptersMap) -> bool:
    """Does ``adapters`` hold psycopg's global maps themselves (copy-on-write, with
    nothing registered on it since)? Registering replaces a shared map by a copy."""
    glob = postgres.adapters
    return (
        adapters is not glob
        and _all_same(adapters._dumpers.values(), glob._dumpers.values())
        and _all_same(adapters._dumpers_by_oid, glob._dumpers_by_oid)
        and _all_same(adapters._loaders, glob._loaders)
        and getattr(adapters.types, "_registry", None) is glob.types._registry
    )


def save_client_state(conn: Any) -> None:
    """Record ``conn``'s client-side attributes as the baseline every borrower gets back
    (the first call, from ``connect``, also records them as the connection came).

    An adapters map that ``configure=`` registered on is frozen into a private
    template: the connection gets a copy-on-write copy of it that flags the connection
    when a borrower registers on it. A map that is still psycopg's global one is
    dropped instead, to be made again (tracked) on first use.
    """
    adapters = conn._adapters
    template = None
    if adapters is not None and not _is_global_copy(adapters):
        template = AdaptersMap(adapters)
        conn._adapters = _tracked_adapters(template, conn)
    elif adapters is not None:
        conn._adapters = None
    snapshot = _snapshot(conn)
    if template is None and not (snapshot[9] or snapshot[10]):
        # Nothing of this connection's own in it: shared with every equal one. (The
        # shared values outlive their connections for a while: never a handler's
        # closure or a connection's template.)
        baseline: tuple[tuple[Any, ...], AdaptersMap | None] = shared((shared(snapshot), None))
    else:
        baseline = (snapshot, template)
    previous = conn._pk_baseline
    conn._pk_baseline = baseline
    # The state as the connection came is kept apart only once configure= changed it:
    # an attribute never stored costs no connection a slot.
    if previous is not None and conn._pk_connected is None and baseline != previous:
        conn._pk_connected = previous
    object.__setattr__(conn, "_pk_client_dirty", False)


def _run_without_io(gen: Generator[Any, Any, None]) -> None:
    """Run one of psycopg's attribute-setting generators, which needs no I/O on an idle
    connection outside a pipeline (it would yield to sync a pipeline)."""
    try:
        next(gen)
    except StopIteration:
        return
    gen.close()
    raise RuntimeError("the connection is still in pipeline mode")


def _in_driver_block(conn: Any) -> bool:
    """Whether the borrower left a psycopg block entered: a ``pipeline()`` (the next
    borrower would get a connection in pipeline mode, where ``stream()`` is refused
    and results wait for a sync), or a transaction psycopg still counts but the server
    no longer has open — a ``transaction()`` block or a two-phase transaction whose end
    the borrower sent as SQL (or prepared), after which psycopg refuses ``commit()``.
    The borrower's block object could still act on the next borrower's connection:
    none of this can be put back."""
    return bool(conn._num_transactions) or conn._tpc is not None or conn._pipeline is not None


def _adapters_changed(adapters: AdaptersMap | None, template: AdaptersMap | None) -> bool:
    """Whether a borrower registered on (or replaced) the connection's adapters map."""
    if adapters is None:
        return template is not None
    return (
        type(adapters) is not _TrackedAdapters
        or adapters._pk_changed
        or getattr(adapters.types, "_pk_changed", True)
    )


def _put_back(conn: Any, now: tuple[Any, ...], baseline: tuple[Any, ...]) -> None:
    """Set the attributes of :func:`_snapshot` back to ``baseline``, ``conn`` idle."""
    if now[0] != baseline[0]:
        _run_without_io(conn._set_autocommit_gen(baseline[0]))
    if now[1] != baseline[1]:
        _run_without_io(conn._set_isolation_level_gen(baseline[1]))
    if now[2] != baseline[2]:
        _run_without_io(conn._set_read_only_gen(baseline[2]))
    if now[3] != baseline[3]:
        _run_without_io(conn._set_deferrable_gen(baseline[3]))
    conn.row_factory, conn.cursor_factory, conn.server_cursor_factory = baseline[4:7]
    conn._prepared.prepare_threshold, conn._prepared.prepared_max = baseline[7:9]
    conn._notice_handlers[:] = baseline[9]
    conn._notify_handlers[:] = baseline[10]


def restore_client_state(conn: Any, as_connected: bool = False) -> bool:
    """Put back what differs from the baseline (``conn`` is idle: rolled back first), or
    with ``as_connected`` from the state before ``configure=`` ran (to run it again).

    Through psycopg's own setters, run without I/O, so psycopg's bookkeeping (the cached
    BEGIN statement) follows; False, to discard the connection, if one refuses or
    the borrower left a pipeline or transaction block entered (:func:`_in_driver_block`).
    """
    if _in_driver_block(conn):
        return False
    backlog = getattr(conn, "_notifies_backlog", None)  # not in every psycopg 3 release
    if backlog:
        # Notifications that arrived while the borrower held the connection were theirs.
        backlog.clear()
    if not (conn._pk_client_dirty or as_connected):
        return True
    baseline, template = (
        (conn._pk_connected or conn._pk_baseline) if as_connected else conn._pk_baseline
    )
    now = _snapshot(conn)
    if now != baseline:
        if conn.pgconn.transaction_status != _IDLE or conn._pipeline is not None:
            return False
        _put_back(conn, now, baseline)
    adapters = conn._adapters
    if as_connected or _adapters_changed(adapters, template):
        conn._adapters = None if template is None else _tracked_adapters(template, conn)
    object.__setattr__(conn, "_pk_client_dirty", False)
    return True
