"""What only the threaded Pool has: a deadline thread, Ctrl-C in a blocked thread, fork,
and the lines of its own putconn.

Everything Pool and AsyncPool share is written once in tests/behaviour/ and runs
against both; each test here says why it cannot be (tests/pool_kinds.py checks).
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import psycopg
import pytest

from poolkeeper import Pool
from tests.conftest import PoolFactory, backends, in_forked_child


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


@pytest.mark.one_model(
    "threads", "Pool's deadline keeper is a thread (AsyncPool's is a loop timer)"
)
def test_close_stops_the_deadline_thread(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1)
    name = f"poolkeeper-{pool.name}-deadlines"
    assert any(t.name == name for t in threading.enumerate())
    pool.close()
    assert not any(t.name == name and t.is_alive() for t in threading.enumerate())


@pytest.mark.one_model(
    "threads",
    "Ctrl-C interrupts a thread blocked on a lock; AsyncPool's counterpart is cancellation",
)
def test_a_wait_cut_short_by_ctrl_c_leaves_the_queue_and_strands_nothing(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(min_size=1, max_size=1, timeout=10)
    held = pool.getconn()
    main = threading.get_ident()

    def press_ctrl_c() -> None:
        wait_until(lambda: pool.stats().waiting == 1)
        signal.pthread_kill(main, signal.SIGINT)

    # Python's own Ctrl-C handler, even if the suite was started with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c)
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            pool.getconn()
    finally:
        presser.join(5)
        signal.signal(signal.SIGINT, previous)
    assert pool.stats().waiting == 0
    # Returned now, the connection must not go to the caller who gave up.
    pool.putconn(held)
    assert pool.stats().idle == 1
    again = pool.getconn(timeout=1)
    assert again is held
    pool.putconn(again)


@pytest.mark.one_model(
    "threads", "fork() of a process whose pool runs threads, from plain sync code"
)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_pool_opened_before_fork_refuses_to_open_or_lend_in_the_child(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    pool.wait(5)
    # getconn trusts "closed" to cover "forked": open() in the child must not undo it.
    for line in in_forked_child(pool.open, pool.getconn):
        assert line.startswith("PoolClosed:") and "fork()" in line, line
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.one_model(
    "threads", "fork() from sync code; AsyncPool's pre-fork case opens in the child's own loop"
)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_pool_made_with_open_false_before_fork_opens_in_the_child(
    make_pool: PoolFactory,
) -> None:
    # The pre-fork server pattern: build at import time, open in each worker.
    pool = make_pool(min_size=1, max_size=1, open=False)

    def borrow_and_close() -> object:
        pool.open()
        with pool.connection() as conn:
            row = conn.execute("SELECT 1").fetchone()
        pool.close()
        return row

    assert in_forked_child(borrow_and_close) == ["ok: (1,)"]
    pool.open()
    with pool.connection() as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


@pytest.mark.one_model(
    "threads",
    "the window between two lines of Pool.putconn (AsyncPool's return cannot be "
    "interleaved there), held open by a trace function in the returning thread",
)
def test_a_waiter_queuing_while_putconn_pushes_is_served_by_that_return(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    # putconn found no waiter and is about to push; a borrower queues in between, finds
    # the stack still empty and sleeps. Only putconn's second look, after its push, can
    # wake it: without it the waiter sleeps out its timeout beside an idle connection.
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    pid = held.info.backend_pid
    lines, first = inspect.getsourcelines(Pool.putconn)
    push = first + max(
        i for i, line in enumerate(lines) if line.strip() == "self._idle.append(rec)"
    )
    at_push = threading.Event()
    errors: list[BaseException] = []

    def hold_before_push(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == push:
            at_push.set()
            wait_until(lambda: pool.stats().waiting == 1)
        return hold_before_push

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return hold_before_push if frame.f_code is Pool.putconn.__code__ else None

    def give_back() -> None:
        sys.settrace(calls)
        try:
            pool.putconn(held)
        except BaseException as exc:
            errors.append(exc)
        finally:
            sys.settrace(None)

    returner = threading.Thread(target=give_back)
    returner.start()
    try:
        assert at_push.wait(5), "putconn never reached its push"
        conn = pool.getconn(timeout=3)
    finally:
        returner.join(10)
    assert not errors
    assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
    pool.putconn(conn)
    assert backends(admin, pool.name) == [pid]
