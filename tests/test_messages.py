"""The pool's messages agree in number with the counts they print."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from poolkeeper import PoolTimeout, TooManyWaiters
from tests.conftest import PoolFactory


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("max_waiting", "says"),
    [(1, "1 caller already waits "), (2, "2 callers already wait ")],
)
def test_too_many_waiters_counts_its_callers(
    make_pool: PoolFactory, max_waiting: int, says: str
) -> None:
    pool = make_pool(min_size=1, max_size=1, max_waiting=max_waiting, timeout=5)
    held = pool.getconn()
    got: list[Any] = []
    threads = [
        threading.Thread(target=lambda: got.append(pool.getconn())) for _ in range(max_waiting)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: pool.stats().waiting == max_waiting)
    with pytest.raises(TooManyWaiters) as caught:
        pool.getconn()
    assert says in str(caught.value)
    pool.putconn(held)
    for i in range(max_waiting):
        wait_until(lambda i=i: len(got) > i)  # type: ignore[misc]
        pool.putconn(got[i])
    for thread in threads:
        thread.join(5)


def test_wait_for_min_size_says_what_it_opened(make_pool: PoolFactory) -> None:
    # A port nothing listens on: no connection can open.
    pool = make_pool(
        "postgresql://postgres@127.0.0.1:1/postgres",
        min_size=1,
        connect_timeout=2,
        open=False,
    )
    pool.open()
    with pytest.raises(PoolTimeout) as caught:
        pool.wait(0.5)
    assert "opened 0 of its min_size=1 within" in str(caught.value)
