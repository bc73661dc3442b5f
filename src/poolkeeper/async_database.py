"""``AsyncDatabase``: the process-wide shared asyncio pool, one per name.

One object per name and process, as with ``Database``; behind it, one
:class:`~poolkeeper.AsyncPool` per running event loop. A connection belongs to the
loop it was opened in, and programs meet more than one loop without trying:
pytest-asyncio gives each test its own, a script calls ``asyncio.run`` twice, a
worker thread runs its own. Each loop's pool is made on first use in that loop
and closed when that loop shuts down (``asyncio.run`` returning) or by
``close_all_connections()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, Literal, overload

from poolkeeper.async_pool import AsyncPool
from poolkeeper.config import PoolConfig
from poolkeeper.drivers import load_async_driver
from poolkeeper.errors import PoolError
from poolkeeper.pool_core import ConnT
from poolkeeper.redact import redact
from poolkeeper.registry import NamedSingleton, overall_status, replica_health
from poolkeeper.replicas import ReplicaRouter
from poolkeeper.stats import PoolStats

if TYPE_CHECKING:
    from poolkeeper.drivers.connections import AsyncpgConnection, PsycopgAsyncConnection

__all__ = ["AsyncDatabase"]


class _LoopPools:
    """The pools of one ``AsyncDatabase`` in one event loop."""

    __slots__ = ("primary", "replicas", "router")

    def __init__(
        self, primary: AsyncPool, replicas: list[AsyncPool], router: ReplicaRouter
    ) -> None:
        self.primary = primary
        self.replicas = replicas
        self.router = router

    def all(self) -> list[AsyncPool]:
        return [self.primary, *self.replicas]


class AsyncDatabase(NamedSingleton, Generic[ConnT]):
    """The shared asyncio pool for ``name``: the same object on every call, in every thread.

    ``AsyncDatabase(name="default", dsn=None, **settings)``: the first call for a
    name takes the settings (as for :class:`~poolkeeper.AsyncPool`, plus
    ``replicas=[dsn, ...]`` for ``connection(readonly=True)``); later calls return
    the same object and raise ``ConfigurationError`` if they ask for different
    settings. Constructing it needs no event loop; every method that uses a pool
    must run inside one, and uses that loop's own pool.

    As with ``Database``, an object kept across ``reset_all()`` registers itself
    again on its next use (or uses the object ``AsyncDatabase(name)`` made
    meanwhile), and a connection borrowed before ``close_all_connections()`` may
    still be released: the closing pool takes it back and closes it.
    """

    if TYPE_CHECKING:
        # For type checkers only: ``driver=`` picks the connection type. At run time
        # NamedSingleton's own __new__ and __init__ take the call unchanged.
        @overload
        def __init__(
            self: AsyncDatabase[PsycopgAsyncConnection],
            name: str = "default",
            dsn: Any = None,
            *,
            driver: Literal["psycopg"] = "psycopg",
            **options: Any,
        ) -> None: ...
        @overload
        def __init__(
            self: AsyncDatabase[AsyncpgConnection],
            name: str = "default",
            dsn: Any = None,
            *,
            driver: Literal["asyncpg"],
            **options: Any,
        ) -> None: ...
        @overload
        def __init__(
            self: AsyncDatabase[Any], name: str = "default", dsn: Any = None, **options: Any
        ) -> None: ...
        def __init__(self, name: str = "default", dsn: Any = None, **options: Any) -> None: ...

    # Keyed by loop; a closed loop's entry is dropped when the next loop's is made.
    _pools: dict[asyncio.AbstractEventLoop, _LoopPools]

    def _setup_pools(self) -> None:
        # A missing driver extra should fail here, not at the first query.
        load_async_driver(self.config.driver)
        self._pools = {}
        self._pools_lock = threading.Lock()
        # Pools being closed, or closed with connections still out: they take those back.
        self._closing: list[AsyncPool[ConnT]] = []

    # -- the pools behind it -----------------------------------------------------------

    def _loop_pools(self) -> _LoopPools:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise PoolError(
                f"AsyncDatabase({self.name!r}) must be used inside a running event loop "
                "(from a coroutine); use poolkeeper.Database() in synchronous code"
            ) from None
        pools = self._pools.get(loop)
        if pools is None or pools.primary.closed:
            live = self._live()
            if live is not self:
                return live._loop_pools()
            with self._pools_lock:
                pools = self._pools.get(loop)
                if pools is None or pools.primary.closed:
                    for old in [lp for lp in self._pools if lp.is_closed()]:
                        del self._pools[old]
                    # Constructed inside the running loop, so each pool starts at once.
                    pools = _LoopPools(
                        AsyncPool(config=self.config),
                        self._make_replica_pools(_pool_for),
                        self._new_router(),
                    )
                    self._pools[loop] = pools
        return pools

    @property
    def pool(self) -> AsyncPool[ConnT]:
        """This event loop's pool, created on first use in the loop (again after a close)."""
        return self._loop_pools().primary

    async def _enter_read(
        self, stack: contextlib.AsyncExitStack, timeout: float | None, txn: bool
    ) -> Any:
        """Borrow for a read: the next usable replica (measuring its lag first when
        that is due), else the primary, or ``NoReplicaAvailable`` under
        ``replica_fallback="fail"``."""
        pools = self._loop_pools()
        router = pools.router
        if not pools.replicas:
            return await stack.enter_async_context(_borrow(pools.primary, timeout, txn))
        for index in router.order():
            pool = pools.replicas[index]
            try:
                if router.due(index) and not router.measured(
                    index, await _replay_lag(pool, timeout)
                ):
                    continue
                return await stack.enter_async_context(_borrow(pool, timeout, txn))
            except PoolError as exc:
                router.failed(index, exc)
        if router.fallback == "fail":
            raise router.no_replica_error()
        return await stack.enter_async_context(_borrow(pools.primary, timeout, txn))

    # -- the seed recipe's API, awaited --------------------------------------------------

    async def get_connection(self, timeout: float | None = None) -> ConnT:
        """Borrow a connection; waits up to ``timeout`` then raises ``PoolTimeout``."""
        return await self.pool.getconn(timeout)

    async def release_connection(self, conn: ConnT) -> None:
        """Return a connection: rolls back an open transaction, discards a broken one.

        Also one borrowed before ``close_all_connections()`` began: the closing pool
        takes it back and closes it, and its ``close()`` returns once the last is back.
        """
        live = type(self)._instances.get(self.name)
        others = live._lenders() if live is not None and live is not self else []
        for pool in self._lenders() + others:
            if conn in pool._lent or conn in pool._closed_under_borrower:
                await pool.putconn(conn)
                return
        raise PoolError(
            f"AsyncDatabase({self.name!r}) did not lend this connection (already returned, "
            "or from another AsyncDatabase or event loop); return each connection once, to "
            "the AsyncDatabase it came from, in the loop that borrowed it"
        )

    def _lenders(self) -> list[AsyncPool[ConnT]]:
        """This loop's pools of this object, and its pools being closed."""
        try:
            pools = self._pools.get(asyncio.get_running_loop())
        except RuntimeError:
            pools = None
        return [*(pools.all() if pools is not None else ()), *self._closing]

    async def close_all_connections(self, timeout: float = 5.0) -> None:
        """Close this name's pools in every event loop; the next use opens fresh ones.

        The current loop's pools are closed here; another loop's are closed in that
        loop (if it still runs) and waited for up to ``timeout``.
        """
        here = asyncio.get_running_loop()
        with self._pools_lock:
            everything = list(self._pools.items())
            self._pools.clear()
            closing = [pool for _, pools in everything for pool in pools.all()]
            self._closing.extend(closing)
        try:
            elsewhere: list[asyncio.Future[None]] = []
            for loop, pools in everything:
                if loop is here:
                    for pool in pools.all():
                        await pool.close(timeout)
                elif not loop.is_closed() and loop.is_running():
                    future = asyncio.run_coroutine_threadsafe(_close_pools(pools, timeout), loop)
                    elsewhere.append(asyncio.wrap_future(future))
            if elsewhere:
                await asyncio.wait(elsewhere, timeout=timeout + 1.0)
        finally:
            with self._pools_lock:
                # Kept only while connections it closed under their borrowers are out.
                self._closing = [
                    p for p in self._closing if p not in closing or p._closed_under_borrower
                ]

    # -- preferred, exception-safe forms -----------------------------------------------

    @contextlib.asynccontextmanager
    async def connection(
        self, timeout: float | None = None, *, readonly: bool = False
    ) -> AsyncIterator[ConnT]:
        """Borrow for an ``async with`` block; ``readonly=True`` uses a usable replica
        when configured (round-robin; see docs/scaling.md), else the primary."""
        if not readonly:
            async with self.pool.connection(timeout) as conn:
                yield conn
            return
        async with contextlib.AsyncExitStack() as stack:
            yield await self._enter_read(stack, timeout, False)

    @contextlib.asynccontextmanager
    async def transaction(
        self, timeout: float | None = None, *, readonly: bool = False
    ) -> AsyncIterator[ConnT]:
        """Borrow inside BEGIN … COMMIT, ROLLBACK on error; ``readonly=True`` routes it
        as ``connection(readonly=True)`` does."""
        if not readonly:
            async with self.pool.transaction(timeout) as conn:
                yield conn
            return
        async with contextlib.AsyncExitStack() as stack:
            yield await self._enter_read(stack, timeout, True)

    def stats(self) -> PoolStats:
        """This event loop's primary pool's :class:`~poolkeeper.PoolStats`."""
        return self.pool.stats()

    def health(self) -> dict[str, object]:
        """This event loop's pools' health, answered at once: the primary's fields,
        plus ``replicas`` (each replica pool's health) when replicas are configured;
        the overall ``status`` is the primary's, ``degraded`` while a replica is not ok."""
        pools = self._loop_pools()
        report = pools.primary.health()
        if pools.replicas:
            replicas = [
                replica_health(pool.health(), pools.router, i)
                for i, pool in enumerate(pools.replicas)
            ]
            report["replicas"] = replicas
            report["status"] = overall_status(report["status"], [r["status"] for r in replicas])
        return report

    async def drain(self) -> None:
        """Replace every connection of this loop's pools, the replicas' too (see
        ``AsyncPool.drain``): after a credential rotation, every pool must reconnect."""
        for pool in self._loop_pools().all():
            await pool.drain()

    # -- process-wide -------------------------------------------------------------------

    @classmethod
    async def reset_all(cls, timeout: float = 5.0) -> None:
        """Close every ``AsyncDatabase`` singleton and forget them (tests, shutdown hooks)."""
        for instance in cls._forget_all():
            await instance.close_all_connections(timeout)

    def _after_fork_in_child(self) -> None:
        # The pools' own fork hooks make their sockets inert; we just stop using them.
        self._pools = {}
        self._pools_lock = threading.Lock()
        self._closing = []


async def _close_pools(pools: _LoopPools, timeout: float) -> None:
    for pool in pools.all():
        await pool.close(timeout)


def _pool_for(config: PoolConfig) -> AsyncPool:
    return AsyncPool(config=config)


def _borrow(
    pool: AsyncPool, timeout: float | None, txn: bool
) -> contextlib.AbstractAsyncContextManager[Any]:
    return pool.transaction(timeout) if txn else pool.connection(timeout)


async def _replay_lag(pool: AsyncPool, timeout: float | None) -> float | None:
    """The replica's replay lag, on a connection borrowed and returned for it. A
    driver error there (the server went away mid-query) counts as the replica down."""
    measure = getattr(pool._driver, "replay_lag", None)
    if measure is None:
        return 0.0
    try:
        async with pool.connection(timeout) as conn:
            lag: float | None = await measure(conn)
    except PoolError:
        raise
    except Exception as exc:
        raise PoolError(f"{pool.name}: measuring replay lag failed: {redact(str(exc))}") from None
    return lag
