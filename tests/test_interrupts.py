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
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, Pool
from tests.conftest import PoolFactory, backends, settled_backends

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
def interrupt_at(
    func: Callable[..., Any],
    text: str,
    exc: type[BaseException] = KeyboardInterrupt,
    *,
    after: int = 0,
) -> Iterator[list[int]]:
    """Raise ``exc`` once, just before the line of ``func`` containing ``text`` (or the
    ``after``-th line of code after it) runs."""
    code = func.__code__
    target = _line_of(func, text, after)
    fired: list[int] = []

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == target and not fired:
            fired.append(target)
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


def _pid(conn: Any) -> int:
    return int(conn.info.backend_pid)


def _assert_slot_repaired(pool: Pool, admin: Admin, name: str, stranded: int) -> None:
    """A borrow succeeds again (it would time out forever with the slot lost), on a new
    backend; the stranded one is closed on the server."""
    with pool.connection(timeout=10) as conn:
        fresh = _pid(conn)
    assert fresh != stranded
    assert settled_backends(admin, name, [fresh]) == [fresh]
    stats = pool.stats()
    assert (stats.size, stats.in_use) == (1, 0)


def _small_pool(make_pool: PoolFactory, name: str) -> Pool:
    pool = make_pool(name=name, min_size=1, max_size=1, connect_timeout=0.5)
    pool.wait(5)
    return pool


def test_an_interrupt_between_the_idle_pop_and_the_lent_map_loses_no_slot(
    make_pool: PoolFactory, admin: Admin
) -> None:
    name = "pk-intr-borrow"
    pool = _small_pool(make_pool, name)
    with pool.connection() as conn:
        stranded = _pid(conn)
    with pytest.raises(KeyboardInterrupt), interrupt_at(Pool.getconn, "self._lent[rec.conn]"):
        pool.getconn()
    assert pool.stats().in_use == 0
    _assert_slot_repaired(pool, admin, name, stranded)


def test_an_interrupt_in_putconn_between_its_pop_and_push_loses_no_slot(
    make_pool: PoolFactory, admin: Admin
) -> None:
    name = "pk-intr-return"
    pool = _small_pool(make_pool, name)
    conn = pool.getconn()
    stranded = _pid(conn)
    with pytest.raises(KeyboardInterrupt), interrupt_at(Pool.putconn, "return_state ="):
        pool.putconn(conn)
    _assert_slot_repaired(pool, admin, name, stranded)


def test_an_interrupt_right_after_connection_borrowed_returns_it(
    make_pool: PoolFactory, admin: Admin
) -> None:
    name = "pk-intr-with"
    pool = _small_pool(make_pool, name)
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
    assert settled_backends(admin, name, [pid]) == [pid]


async def test_an_async_interrupt_between_the_idle_pop_and_the_lent_map_loses_no_slot(
    dsn: str, admin: Admin
) -> None:
    name = "pk-intr-async-borrow"
    async with AsyncPool(dsn, name=name, min_size=1, max_size=1, connect_timeout=0.5) as pool:
        async with pool.connection() as conn:
            stranded = _pid(conn)
        with (
            pytest.raises(Interrupt),
            interrupt_at(AsyncPool.getconn, "self._lent[rec.conn]", Interrupt),
        ):
            await pool.getconn()
        async with pool.connection(timeout=10) as conn:
            fresh = _pid(conn)
        assert fresh != stranded
        assert settled_backends(admin, name, [fresh]) == [fresh]


async def test_an_async_interrupt_in_putconn_loses_no_slot(dsn: str, admin: Admin) -> None:
    name = "pk-intr-async-return"
    async with AsyncPool(dsn, name=name, min_size=1, max_size=1, connect_timeout=0.5) as pool:
        conn = await pool.getconn()
        stranded = _pid(conn)
        with pytest.raises(Interrupt), interrupt_at(AsyncPool.putconn, "return_state =", Interrupt):
            await pool.putconn(conn)
        async with pool.connection(timeout=10) as conn:
            fresh = _pid(conn)
        assert fresh != stranded
        assert settled_backends(admin, name, [fresh]) == [fresh]


@contextlib.contextmanager
def interrupt_on_return(func: Callable[..., Any]) -> Iterator[list[int]]:
    """Raise KeyboardInterrupt once as ``func`` returns: its result never reaches the
    caller's variable, as when Ctrl-C lands right after the call."""
    code = func.__code__
    fired: list[int] = []

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "return" and not fired:
            fired.append(frame.f_lineno)
            raise KeyboardInterrupt
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is code else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def test_a_borrow_whose_result_never_reached_the_caller_loses_no_slot(
    make_pool: PoolFactory, admin: Admin
) -> None:
    name = "pk-intr-result"
    pool = _small_pool(make_pool, name)
    with pool.connection() as conn:
        stranded = _pid(conn)
    del conn
    with pytest.raises(KeyboardInterrupt), interrupt_on_return(Pool.getconn):
        pool.getconn()
    assert pool.stats().in_use == 1  # lent, and nobody can ever return it
    _assert_slot_repaired(pool, admin, name, stranded)


def test_a_connection_held_long_by_its_borrower_is_never_taken_back(
    make_pool: PoolFactory, admin: Admin
) -> None:
    name = "pk-intr-held"
    pool = _small_pool(make_pool, name)
    with pool.connection() as conn:
        pid = _pid(conn)
        # Held past the audit's grace (2 x connect_timeout + 1 s) across several audits.
        time.sleep(2 * pool.config.connect_timeout + 2.5)
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
    assert backends(admin, name) == [pid]
