"""Behaviours a psycopg_pool user relies on, in both pools, proven on the server.

Each scenario is written once as a coroutine and runs against ``Pool`` and
``AsyncPool``: ``_call`` awaits what the async pool returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
import warnings
import weakref
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkeeper import AsyncPool, ConfigurationError, Pool, TooManyWaiters
from tests.async_helpers import POOL_CLASS_NAMES, maybe_await, pool_of
from tests.conftest import backends, settled_backends
from tests.faults.proxy import FaultProxy

KINDS = POOL_CLASS_NAMES


def _terminate(admin: psycopg.Connection[Any], pid: int) -> None:
    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
        assert time.monotonic() < deadline, "the terminated backend did not exit"
        time.sleep(0.01)


# -- check= with a callable runs before every lend ----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_check_callable_runs_before_every_lend(
    dsn: str, admin: psycopg.Connection[Any], kind: str
) -> None:
    """A connection returned a moment ago whose backend was then killed is caught by
    ``check=`` before it is lent again, whatever ``check_after`` says (it applies to
    ``check="auto"`` only): the borrower gets a working connection to a new backend."""
    name = f"pk-parity-check-{kind.lower()}"
    calls: list[int] = []

    async def scenario() -> None:
        def check(conn: Any) -> Any:
            calls.append(1)
            if kind == "Pool":
                conn.execute("SELECT 1")
                return None
            return conn.execute("SELECT 1")

        pool = pool_of(kind, dsn, name, min_size=1, max_size=1, check=check, check_after=600)
        try:
            await maybe_await(pool.wait())
            conn = await maybe_await(pool.getconn())
            await maybe_await(pool.putconn(conn))
            (old,) = backends(admin, name)
            _terminate(admin, old)
            conn = await maybe_await(pool.getconn())
            try:
                cur = await maybe_await(conn.execute("SELECT pg_backend_pid()"))
                row = await maybe_await(cur.fetchone())
                assert row[0] != old
                assert row[0] in backends(admin, name)
            finally:
                await maybe_await(pool.putconn(conn))
            assert len(calls) >= 3  # each of the three lends was checked
        finally:
            await maybe_await(pool.close())

    asyncio.run(scenario())


# -- reconnect_failed= and giving up on time ------------------------------------------------


class _RefusingPort:
    """A loopback port that refuses connections (bound, never listening) until
    :meth:`serve` puts a proxy to the test server there: a server that was down and
    comes back at the same address."""

    def __init__(self, dsn: str) -> None:
        self._target = int(conninfo_to_dict(dsn).get("port") or 5432)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.proxy: FaultProxy | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def serve(self) -> None:
        self._sock.close()
        self.proxy = FaultProxy(self._target, port=self.port)

    def close(self) -> None:
        self._sock.close()
        if self.proxy is not None:
            self.proxy.close()


@pytest.mark.parametrize("kind", KINDS)
def test_reconnect_failed_is_called_at_reconnect_timeout(dsn: str, kind: str) -> None:
    """Reconnection gives up at ``reconnect_timeout`` (the last back-off sleep is cut to
    the time left, not up to a whole step later) and then calls ``reconnect_failed``
    with the pool. Several pools at once, as each one's back-off is random."""
    timeout = 1.0
    refusing = _RefusingPort(dsn)
    gave_up: dict[int, float] = {}

    async def scenario() -> None:
        pools: list[Pool | AsyncPool] = []

        def failed(pool: Any) -> None:
            gave_up[id(pool)] = time.monotonic()

        start = time.monotonic()
        for i in range(6):
            pools.append(
                pool_of(
                    kind,
                    refusing.dsn,
                    f"pk-parity-gaveup-{i}",
                    min_size=1,
                    reconnect_timeout=timeout,
                    reconnect_failed=failed,
                )
            )
        try:
            while len(gave_up) < len(pools) and time.monotonic() - start < timeout + 4:
                await asyncio.sleep(0.02)
            assert set(gave_up) == {id(p) for p in pools}
            # Giving up is due at `timeout` plus one refused attempt (a millisecond);
            # a whole back-off step late would be up to 2 s, and with six pools
            # drawing their back-off at random, one of them nearly always is.
            assert max(gave_up.values()) - start < timeout + 0.5
        finally:
            for pool in pools:
                await maybe_await(pool.close())

    try:
        asyncio.run(scenario())
    finally:
        refusing.close()


# -- wait() waits out a restart ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_wait_waits_out_a_server_that_comes_back(dsn: str, kind: str) -> None:
    """With the breaker open (the server refused for longer than ``fail_fast_after``),
    ``wait(timeout)`` keeps trying until its deadline and returns once the server is
    back, instead of raising at once."""
    refusing = _RefusingPort(dsn)

    async def scenario() -> None:
        pool = pool_of(kind, refusing.dsn, f"pk-parity-wait-{kind.lower()}", min_size=1)
        try:
            deadline = time.monotonic() + 5
            while not pool.stats().breaker_open:
                assert time.monotonic() < deadline, "the breaker never opened"
                await asyncio.sleep(0.02)
            threading.Timer(0.3, refusing.serve).start()
            await maybe_await(pool.wait(8.0))
            async with contextlib.AsyncExitStack() as stack:
                if kind == "Pool":
                    conn = stack.enter_context(pool.connection())  # type: ignore[arg-type]
                    row = conn.execute("SELECT 1").fetchone()
                else:
                    conn = await stack.enter_async_context(pool.connection())  # type: ignore[arg-type]
                    row = await (await conn.execute("SELECT 1")).fetchone()
                assert row == (1,)
        finally:
            await maybe_await(pool.close())

    try:
        asyncio.run(scenario())
    finally:
        refusing.close()


# -- a pool dropped without close() is collected ------------------------------------------


def _collected(ref: weakref.ref[Any], held: list[Any]) -> bool:
    """Drop the last reference (``held``) and collect until the object behind ``ref``
    is gone (a background thread may hold it for the microseconds of a housekeeping
    pass); True if it went, and warned with a ``ResourceWarning`` on the way."""
    warned = False
    deadline = time.monotonic() + 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        held.clear()
        while True:
            gc.collect()
            warned = warned or any(issubclass(w.category, ResourceWarning) for w in caught)
            caught.clear()  # a warning's source is the pool: let it go
            if ref() is None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    return warned and ref() is None


def _pool_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"poolkeeper-{name}-")]


@pytest.mark.one_model(
    "threads", "a dropped Pool's threads end; what is dropped is written once in PoolCore.__del__"
)
def test_a_pool_dropped_without_close_is_collected(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """Its threads hold it only weakly: ``del pool`` collects it, with a
    ``ResourceWarning``; its threads end and its server connections close."""
    name = "pk-parity-gc-sync"
    pool = Pool(dsn, name=name, min_size=2, max_size=4)
    pool.wait(5)
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    assert len(backends(admin, name)) == 2
    assert _pool_threads(name)
    ref = weakref.ref(pool)
    held = [pool]
    del pool
    assert _collected(ref, held)
    for thread in _pool_threads(name):
        thread.join(5)
    assert not _pool_threads(name)
    assert settled_backends(admin, name, []) == []


@pytest.mark.one_model(
    "asyncio", "a dropped AsyncPool's task and timer, on a loop that goes on running"
)
def test_an_async_pool_dropped_without_close_is_collected(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """Its housekeeping task and deadline timer hold it only weakly: ``del pool``
    collects it, with a ``ResourceWarning``, and its server connections close on its
    loop, which goes on running."""
    name = "pk-parity-gc-async"

    async def scenario() -> None:
        pool = AsyncPool(dsn, name=name, min_size=2, max_size=4)
        await pool.wait(5)
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        assert len(backends(admin, name)) == 2
        ref = weakref.ref(pool)
        held = [pool]
        del pool, conn
        assert _collected(ref, held)
        deadline = time.monotonic() + 5
        while backends(admin, name) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the loop runs the goodbyes
        assert backends(admin, name) == []

    asyncio.run(scenario())


# -- growth fits the demand -----------------------------------------------------------------
#
# Each growth connection is held inside ``configure=`` until the test opens its gate: while
# it is held, the server shows its backend, and what else the pool starts meanwhile is
# what the growth rule decided, not how fast the machine happened to connect.


class _Gates:
    """A ``configure=`` that, once armed, holds the n-th connection until ``open(n)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.armed = False
        self.entered = 0
        self.sync_gates = [threading.Event() for _ in range(20)]
        self.async_gates: list[asyncio.Event] = []

    @property
    def configure(self) -> Any:
        """The hook for the pool's kind (psycopg_pool's async pool wants a coroutine)."""
        if self.kind == "Pool":
            return self._configure

        async def configure(conn: Any) -> None:
            if self.armed:
                n = self.entered
                self.entered += 1
                await asyncio.wait_for(self.async_gates[n].wait(), 10)

        return configure

    def _configure(self, conn: Any) -> None:
        if self.armed:
            n = self.entered
            self.entered += 1
            assert self.sync_gates[n].wait(10), "a gate was never opened"

    def arm(self) -> None:
        self.async_gates = [asyncio.Event() for _ in range(20)] if self.kind != "Pool" else []
        self.armed = True

    def open(self, *which: int) -> None:
        for n in which:
            (self.sync_gates if self.kind == "Pool" else self.async_gates)[n].set()


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _borrow_in_background(pool: Pool | AsyncPool, count: int) -> Any:
    """``count`` callers each borrowing once for a ``SELECT 1``; returns an awaitable
    that ends when all are done (threads for a Pool, tasks for an AsyncPool)."""

    async def borrow() -> None:
        conn = await maybe_await(pool.getconn())
        await maybe_await(conn.execute("SELECT 1"))
        await maybe_await(pool.putconn(conn))

    if isinstance(pool, AsyncPool):
        tasks = [asyncio.create_task(borrow()) for _ in range(count)]
        return asyncio.wait_for(asyncio.gather(*tasks), 5)
    threads = [threading.Thread(target=asyncio.run, args=(borrow(),)) for _ in range(count)]
    for thread in threads:
        thread.start()

    async def joined() -> None:
        for thread in threads:
            thread.join(5)

    return joined()


async def _callers(kind: str, getconn: Any, putconn: Any, count: int, hold: Any = None) -> Any:
    """``count`` callers (threads for a sync pool, tasks for an async one) that each
    borrow once, run ``SELECT 1``, and return the connection at once, or once the
    ``hold`` event is set. Returns an awaitable that ends when all are done."""
    if kind == "Pool":

        def borrow() -> None:
            conn = getconn()
            conn.execute("SELECT 1")
            if hold is not None:
                assert hold.wait(10)
            putconn(conn)

        threads = [threading.Thread(target=borrow) for _ in range(count)]
        for thread in threads:
            thread.start()

        async def joined() -> None:
            for thread in threads:
                await asyncio.to_thread(thread.join, 10)
                assert not thread.is_alive()

        return joined()

    async def aborrow() -> None:
        conn = await getconn()
        await conn.execute("SELECT 1")
        if hold is not None:
            await hold.wait()
        await putconn(conn)

    tasks = [asyncio.create_task(aborrow()) for _ in range(count)]
    return asyncio.wait_for(asyncio.gather(*tasks), 10)


async def _burst_on_gated_growth(kind: str, pool: Any, gates: _Gates, waiting: Any) -> None:
    """50 callers queue behind the pool's two connections, each for a ``SELECT 1``; the
    two come back and serve them all, while the growth connection the queue started is
    held in ``configure=``. Then it is let through."""
    held = [await maybe_await(pool.getconn()) for _ in range(2)]
    gates.arm()
    done = await _callers(kind, pool.getconn, pool.putconn, 50)
    await _until(lambda: waiting() == 50 and gates.entered >= 1)
    for conn in held:
        await maybe_await(pool.putconn(conn))
    await done
    gates.open(*range(20))


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_of_short_requests_grows_as_psycopg_pool_does(
    dsn: str, admin: psycopg.Connection[Any], kind: str
) -> None:
    """A burst of 50 short requests on a pool of 2 (max 20, four openers): connections
    come back long before a new one could be opened, so growth goes one connection at
    a time, as in psycopg_pool. With the growth connection held until the burst is
    over, both pools end with 2 + 1 backends (opening for every waiter at once left
    2 + num_workers, and before openers asked again, max_size)."""
    name = f"pk-parity-burst-{kind.lower()}"
    theirs_name = f"pp-parity-burst-{kind.lower()}"

    async def scenario() -> None:
        gates = _Gates(kind)
        pool = pool_of(
            kind, dsn, name, min_size=2, max_size=20, num_workers=4, configure=gates.configure
        )
        try:
            await maybe_await(pool.wait(5))
            await _burst_on_gated_growth(kind, pool, gates, lambda: pool.stats().waiting)
            await _until(lambda: pool.stats().opening == 0)
            ours = backends(admin, name)
            assert gates.entered == 1
        finally:
            await maybe_await(pool.close())

        gates = _Gates(kind)
        settings: dict[str, Any] = dict(
            kwargs={"application_name": theirs_name},
            min_size=2,
            max_size=20,
            num_workers=4,
            configure=gates.configure,
            open=False,
        )
        if kind == "Pool":
            theirs: Any = psycopg_pool.ConnectionPool(dsn, **settings)
            theirs.open(wait=True, timeout=5)
        else:
            theirs = psycopg_pool.AsyncConnectionPool(dsn, **settings)
            await theirs.open(wait=True, timeout=5)
        try:
            await _burst_on_gated_growth(
                kind, theirs, gates, lambda: theirs.get_stats()["requests_waiting"]
            )
            # psycopg_pool has no count of attempts in flight; its growth is over
            # once this flag drops (the connection opened is in the pool by then).
            await _until(lambda: not theirs._growing)
            their_backends = backends(admin, theirs_name)
            assert gates.entered == 1
        finally:
            await maybe_await(theirs.close())
        assert len(ours) == len(their_backends) == 3

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_growth_skips_connections_the_demand_no_longer_needs(
    dsn: str, admin: psycopg.Connection[Any], kind: str
) -> None:
    """Five callers queue behind the one connection; one growth connection is started
    and held in ``configure=``. Meanwhile the connection comes back and serves all
    five, so nothing else is opened: the pool ends with two backends, not six."""
    name = f"pk-parity-growth-{kind.lower()}"

    async def scenario() -> None:
        gates = _Gates(kind)
        pool = pool_of(
            kind, dsn, name, min_size=1, max_size=10, num_workers=2, configure=gates.configure
        )
        try:
            await maybe_await(pool.wait(5))
            held = await maybe_await(pool.getconn())
            gates.arm()
            done = await _callers(kind, pool.getconn, pool.putconn, 5)
            await _until(lambda: pool.stats().waiting == 5 and gates.entered == 1)
            # One growth connection in flight for five waiters, however many openers.
            assert pool.stats().opening == 1
            assert len(backends(admin, name)) == 2
            await maybe_await(pool.putconn(held))
            await done
            gates.open(0)
            await _until(lambda: pool.stats().opening == 0)
            assert gates.entered == 1
            assert len(backends(admin, name)) == 2
        finally:
            await maybe_await(pool.close())

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_growth_opens_side_by_side_when_no_connection_comes_back(
    dsn: str, admin: psycopg.Connection[Any], kind: str
) -> None:
    """Four callers queue behind the one connection, which is not returned. The first
    growth connection opens alone; when it is ready the same caller is still first in
    the queue (nothing came back meanwhile), so the next three open side by side
    (num_workers=3), each of them visible on the server while it is held in
    ``configure=``."""
    name = f"pk-parity-grow-wide-{kind.lower()}"

    async def scenario() -> None:
        gates = _Gates(kind)
        pool = pool_of(
            kind, dsn, name, min_size=1, max_size=10, num_workers=3, configure=gates.configure
        )
        hold: Any = threading.Event() if kind == "Pool" else asyncio.Event()
        try:
            # What each caller sees being opened once it has its connection. The hand-off
            # and the claim of the next openings are one step under the pool's lock
            # (a thread takes it to look; a task runs after the step): housekeeping
            # would claim them too, but only on its next pass.
            opening_seen: list[int] = []

            def note_opening() -> None:
                if kind == "Pool":
                    with pool._lock:
                        opening_seen.append(pool.stats().opening)
                else:
                    opening_seen.append(pool.stats().opening)

            def getconn() -> Any:
                if kind == "Pool":
                    conn = pool.getconn()
                    note_opening()
                    return conn

                async def borrow() -> Any:
                    conn = await pool.getconn()
                    note_opening()
                    return conn

                return borrow()

            await maybe_await(pool.wait(5))
            held = await maybe_await(pool.getconn())
            gates.arm()
            done = await _callers(kind, getconn, pool.putconn, 4, hold=hold)
            await _until(lambda: pool.stats().waiting == 4 and gates.entered == 1)
            assert pool.stats().opening == 1
            assert len(backends(admin, name)) == 2
            gates.open(0)
            await _until(lambda: len(opening_seen) == 1)
            assert opening_seen == [3]
            # Three connecting at once, none of them through configure= yet.
            await _until(lambda: gates.entered == 4)
            assert len(backends(admin, name)) == 5
            gates.open(1, 2, 3)
            await _until(lambda: pool.stats().in_use == 5)
            hold.set()
            await done
            await maybe_await(pool.putconn(held))
            assert len(backends(admin, name)) == 5
        finally:
            hold.set()
            await maybe_await(pool.close())

    asyncio.run(scenario())


# -- stats: times and the counters psycopg_pool users look for ------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_stats_count_times_bad_returns_and_refusals(
    dsn: str, admin: psycopg.Connection[Any], kind: str
) -> None:
    """Usage, wait and connect times, connections returned broken, and borrows refused
    by ``max_waiting``: monotonic counters in ``stats()``, and in ``health()``."""
    name = f"pk-parity-stats-{kind.lower()}"

    async def scenario() -> None:
        pool = pool_of(kind, dsn, name, min_size=1, max_size=1, max_waiting=1)
        try:
            await maybe_await(pool.wait(5))
            assert pool.stats().connect_time_ms > 0
            # Usage: a borrow that spends 0.2 s on the server.
            conn = await maybe_await(pool.getconn())
            await maybe_await(conn.execute("SELECT pg_sleep(0.2)"))
            await maybe_await(pool.putconn(conn))
            assert pool.stats().usage_time_ms >= 200
            # Wait: a caller queues while the only connection is held for 0.2 s.
            held = await maybe_await(pool.getconn())
            done = await _borrow_in_background(pool, 1)
            await _until(lambda: pool.stats().waiting == 1)
            # Refused: one caller waits already (max_waiting=1).
            with pytest.raises(TooManyWaiters):
                await maybe_await(pool.getconn(timeout=1))
            await asyncio.sleep(0.2)
            # Returned bad: its backend is killed while it is lent.
            (pid,) = backends(admin, name)
            _terminate(admin, pid)
            with contextlib.suppress(psycopg.Error):
                await maybe_await(held.execute("SELECT 1"))
            await maybe_await(pool.putconn(held))
            await done
            stats = pool.stats()
            assert stats.wait_time_ms >= 150
            assert (stats.refused, stats.returned_bad) == (1, 1)
            assert stats.as_dict()["refused"] == 1
            health = pool.health()
            assert (health["refused"], health["returned_bad"]) == (1, 1)
            before = pool.stats()
            await maybe_await(pool.close())
            after = pool.stats()  # the closed connections' times are kept
            assert after.usage_time_ms >= before.usage_time_ms
            assert after.connect_time_ms >= before.connect_time_ms
        finally:
            await maybe_await(pool.close())

    asyncio.run(scenario())


@pytest.mark.one_model("asyncio", "a waiting task cancelled: asyncio cancellation")
def test_stats_count_cancelled_waits(dsn: str) -> None:
    """A waiting task cancelled is counted in ``cancelled``."""

    async def scenario() -> None:
        async with AsyncPool(dsn, name="pk-parity-cancelled", min_size=1, max_size=1) as pool:
            async with pool.connection():
                waiter = asyncio.create_task(pool.getconn())
                await _until(lambda: pool.stats().waiting == 1)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
            assert pool.stats().cancelled == 1

    asyncio.run(scenario())


# -- connection_class= and close_returns= (psycopg 3) ---------------------------------------


class _MyConnection(psycopg.Connection[Any]):
    """A user's subclass, as psycopg_pool users pass in connection_class=."""

    def whoami(self) -> int:
        row = self.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


class _MyAsyncConnection(psycopg.AsyncConnection[Any]):
    async def whoami(self) -> int:
        row = await (await self.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("kind", KINDS)
def test_connection_class_composes_with_the_pools_tracking(
    dsn: str, admin: psycopg.Connection[Any], kind: str
) -> None:
    """The user's class is what the pool lends (its methods work), and the pool's
    session tracking still applies: a SET is reset on return (seen on the server)."""
    name = f"pk-parity-class-{kind.lower()}"
    cls = _MyConnection if kind == "Pool" else _MyAsyncConnection

    async def scenario() -> None:
        pool = pool_of(kind, dsn, name, min_size=1, max_size=1, connection_class=cls)
        try:
            conn = await maybe_await(pool.getconn())
            assert isinstance(conn, cls)
            assert await maybe_await(conn.whoami()) in backends(admin, name)
            await maybe_await(conn.execute("SET work_mem = '7MB'"))
            await maybe_await(pool.putconn(conn))
            conn = await maybe_await(pool.getconn())
            cur = await maybe_await(conn.execute("SHOW work_mem"))
            assert (await maybe_await(cur.fetchone()))[0] != "7MB"
            await maybe_await(pool.putconn(conn))
        finally:
            await maybe_await(pool.close())

    asyncio.run(scenario())


def test_connection_class_of_the_wrong_kind_or_driver_is_refused(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="connection_class"):
        Pool(dsn, open=False, connection_class=_MyAsyncConnection)
    with pytest.raises(ConfigurationError, match="connection_class"):
        AsyncPool(dsn, open=False, connection_class=_MyConnection)
    with pytest.raises(ConfigurationError, match="psycopg 3"):
        Pool(dsn, open=False, driver="psycopg2", connection_class=_MyConnection)
    with pytest.raises(ConfigurationError, match="close_returns"):
        Pool(dsn, open=False, driver="psycopg2", close_returns=True)


@pytest.mark.parametrize("kind", KINDS)
def test_close_returns_gives_a_closed_connection_back_to_the_pool(
    dsn: str, admin: psycopg.Connection[Any], kind: str
) -> None:
    """With ``close_returns=True``, ``conn.close()`` returns a lent connection: the
    same backend serves the next borrow, rolled back, and nothing is left lent."""
    name = f"pk-parity-closeret-{kind.lower()}"

    async def scenario() -> None:
        pool = pool_of(kind, dsn, name, min_size=1, max_size=1, close_returns=True)
        try:
            conn = await maybe_await(pool.getconn())
            await maybe_await(conn.execute("CREATE TEMP TABLE never_committed (x int)"))
            cur = await maybe_await(conn.execute("SELECT pg_backend_pid()"))
            pid = (await maybe_await(cur.fetchone()))[0]
            await maybe_await(conn.close())
            assert pool.stats().in_use == 0
            assert backends(admin, name) == [pid]
            again = await maybe_await(pool.getconn())
            assert again is conn and not again.closed
            cur = await maybe_await(again.execute("SELECT to_regclass('never_committed')"))
            assert (await maybe_await(cur.fetchone()))[0] is None
            await maybe_await(pool.putconn(again))
        finally:
            await maybe_await(pool.close())
        assert settled_backends(admin, name, []) == []  # the pool's own close closes

    asyncio.run(scenario())
