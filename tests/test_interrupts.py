"""An interrupt (Ctrl-C, a signal handler's exception) landing at the worst line of a
borrow or a return never loses a slot for good.

The interrupt is injected deterministically: a trace function raises it when the
chosen line of the pool's own code is about to run, so each test hits its window
instead of hoping to. With ``max_size=1`` a lost slot would make every later borrow
time out; the pool's housekeeping audit must notice and repair it, and the server
must show the stranded backend gone and a fresh one serving.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, Pool
from tests.conftest import PoolFactory, settled_backends, unique_pool_name

Admin = psycopg.Connection[Any]


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt where asyncio would stop the loop on the real one."""


def _line_of(func: Callable[..., Any], text: str, after: int = 0) -> int:
    """The first line of ``func`` whose source contains ``text`` (or the ``after``-th
    line of code after it)."""
    lines, start = inspect.getsourcelines(func)
    at = next(i for i, line in enumerate(lines) if text in line)
    while after:
        at += 1
        code = lines[at].strip()
        if code and not code.startswith("#"):
            after -= 1
    return start + at


@contextlib.contextmanager
def _trace_calls_of(
    func: Callable[..., Any], fire: Callable[[FrameType, str], bool], exc: type[BaseException]
) -> Iterator[list[int]]:
    """Raise ``exc`` once, at the first trace event in a call of ``func`` for which
    ``fire(frame, event)`` is true; yields the line it fired at (empty if it did not)."""
    code = func.__code__
    fired: list[int] = []

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if not fired and fire(frame, event):
            fired.append(frame.f_lineno)
            raise exc
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is code else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def interrupt_at(
    func: Callable[..., Any],
    text: str,
    exc: type[BaseException] = KeyboardInterrupt,
    *,
    after: int = 0,
) -> contextlib.AbstractContextManager[list[int]]:
    """Raise ``exc`` once, just before the line of ``func`` containing ``text`` (or the
    ``after``-th line of code after it) runs."""
    target = _line_of(func, text, after)
    return _trace_calls_of(
        func, lambda frame, event: event == "line" and frame.f_lineno == target, exc
    )


def interrupt_on_return(func: Callable[..., Any]) -> contextlib.AbstractContextManager[list[int]]:
    """Raise KeyboardInterrupt once as ``func`` returns: its result never reaches the
    caller's variable, as when Ctrl-C lands right after the call."""
    return _trace_calls_of(func, lambda frame, event: event == "return", KeyboardInterrupt)


def _pid(conn: Any) -> int:
    return int(conn.info.backend_pid)


#: One slot: a lost one would make every later borrow time out.
SMALL: dict[str, Any] = {"min_size": 1, "max_size": 1, "connect_timeout": 0.5}


@pytest.fixture
def pool(make_pool: PoolFactory) -> Pool:
    """A one-connection pool, its connection open."""
    made = make_pool(**SMALL)
    made.wait(5)
    return made


def _assert_slot_repaired(pool: Pool, admin: Admin, stranded: int) -> None:
    """A borrow succeeds again (it would time out forever with the slot lost), on a new
    backend; the stranded one is closed on the server."""
    with pool.connection(timeout=10) as conn:
        fresh = _pid(conn)
    assert fresh != stranded
    assert settled_backends(admin, pool.name, [fresh]) == [fresh]
    stats = pool.stats()
    assert (stats.size, stats.in_use) == (1, 0)


@pytest.mark.one_model(
    "threads",
    "injected at a line of Pool's own getconn/putconn, which are written per pool (the hot path)",
)
def test_an_interrupt_between_the_idle_pop_and_the_lent_map_loses_no_slot(
    pool: Pool, admin: Admin
) -> None:
    with pool.connection() as conn:
        stranded = _pid(conn)
    with pytest.raises(KeyboardInterrupt), interrupt_at(Pool.getconn, "self._lent[rec.conn]"):
        pool.getconn()
    assert pool.stats().in_use == 0
    _assert_slot_repaired(pool, admin, stranded)


@pytest.mark.one_model(
    "threads",
    "injected at a line of Pool's own getconn/putconn, which are written per pool (the hot path)",
)
def test_an_interrupt_in_putconn_between_its_pop_and_push_loses_no_slot(
    pool: Pool, admin: Admin
) -> None:
    conn = pool.getconn()
    stranded = _pid(conn)
    with pytest.raises(KeyboardInterrupt), interrupt_at(Pool.putconn, "return_state ="):
        pool.putconn(conn)
    _assert_slot_repaired(pool, admin, stranded)


@pytest.mark.one_model("threads", "injected at a line of Pool.connection(), a sync generator")
def test_an_interrupt_right_after_connection_borrowed_returns_it(pool: Pool, admin: Admin) -> None:
    generator = inspect.unwrap(Pool.connection)
    with (
        pytest.raises(KeyboardInterrupt),
        # The line right after the borrow, whatever it is: the window the borrowed
        # connection crosses before the block's try can return it.
        interrupt_at(generator, "= self.getconn(timeout)", after=1),
        pool.connection(),
    ):
        pytest.fail("the block must not run")
    # Returned at once, by connection() itself: the same backend serves the next borrow.
    with pool.connection(timeout=1) as conn:
        pid = _pid(conn)
    assert settled_backends(admin, pool.name, [pid]) == [pid]


@pytest.fixture
async def async_pool(dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[AsyncPool]:
    """The asyncio twin of the ``pool`` fixture."""
    async with AsyncPool(dsn, name=unique_pool_name(request), **SMALL) as made:
        await made.wait(5)
        yield made


async def _assert_async_slot_repaired(pool: AsyncPool, admin: Admin, stranded: int) -> None:
    """The asyncio pool's half of :func:`_assert_slot_repaired`."""
    async with pool.connection(timeout=10) as conn:
        fresh = _pid(conn)
    assert fresh != stranded
    assert settled_backends(admin, pool.name, [fresh]) == [fresh]


@pytest.mark.one_model(
    "asyncio",
    "injected at a line of AsyncPool's own getconn/putconn, which are written per pool (the"
    " hot path)",
)
async def test_an_async_interrupt_between_the_idle_pop_and_the_lent_map_loses_no_slot(
    async_pool: AsyncPool, admin: Admin
) -> None:
    async with async_pool.connection() as conn:
        stranded = _pid(conn)
    with (
        pytest.raises(Interrupt),
        interrupt_at(AsyncPool.getconn, "self._lent[rec.conn]", Interrupt),
    ):
        await async_pool.getconn()
    await _assert_async_slot_repaired(async_pool, admin, stranded)


@pytest.mark.one_model(
    "asyncio",
    "injected at a line of AsyncPool's own getconn/putconn, which are written per pool (the"
    " hot path)",
)
async def test_an_async_interrupt_in_putconn_loses_no_slot(
    async_pool: AsyncPool, admin: Admin
) -> None:
    conn = await async_pool.getconn()
    stranded = _pid(conn)
    with pytest.raises(Interrupt), interrupt_at(AsyncPool.putconn, "return_state =", Interrupt):
        await async_pool.putconn(conn)
    await _assert_async_slot_repaired(async_pool, admin, stranded)


@pytest.mark.one_model(
    "threads",
    "an interrupt as Pool.getconn returns, between two bytecodes of the caller's thread; a "
    "task's equivalent is cancellation (test_async_pool.py)",
)
def test_a_borrow_whose_result_never_reached_the_caller_loses_no_slot(
    pool: Pool, admin: Admin
) -> None:
    with pool.connection() as conn:
        stranded = _pid(conn)
    del conn
    with pytest.raises(KeyboardInterrupt), interrupt_on_return(Pool.getconn):
        pool.getconn()
    assert pool.stats().in_use == 1  # lent, and nobody can ever return it
    _assert_slot_repaired(pool, admin, stranded)
