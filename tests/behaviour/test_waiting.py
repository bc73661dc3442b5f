"""Waiting for a connection, on both pool classes: timeouts, hand-off, order, limits.

All of it is the pool's own queue and clock, the same whatever the driver, so each
runs over one driver per pool class (``per_model``). Concurrent borrowers are real
threads for ``Pool`` and tasks for ``AsyncPool`` (``Kind.spawn``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from poolkeeper import PoolTimeout, TooManyWaiters
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import Kind, assert_books_balance, wait_until

pytestmark = pytest.mark.per_model("the pool's waiter queue and deadlines; no driver call")


async def test_exhausted_pool_times_out_on_time(make_pool: MakePool) -> None:
    pool = make_pool(min_size=2, max_size=2, timeout=0.4)
    held = [await pool.getconn(), await pool.getconn()]
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"max_size=2") as info:
        await pool.getconn()
    elapsed = time.monotonic() - start
    assert 0.39 <= elapsed < 0.9
    assert "raise max_size" in str(info.value)
    for c in held:
        await pool.putconn(c)
    assert pool.stats().timeouts == 1
    assert pool.stats().waiting == 0


async def test_a_per_call_timeout_overrides_the_pools(make_pool: MakePool) -> None:
    # Far apart, so that a per-call timeout that were ignored would fail the bound:
    # the pool would wait 20 s, the call asks for 0.2 s.
    pool = make_pool(min_size=1, max_size=1, timeout=20)
    held = await pool.getconn()
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"within 0\.2s"):
        await pool.getconn(timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 5
    await pool.putconn(held)
    assert pool.stats().timeouts == 1
    assert pool.stats().waiting == 0


async def test_zero_timeout_fails_at_once_when_nothing_is_idle(make_pool: MakePool) -> None:
    # "At once" against a pool timeout of 20 s: the bound tells the two apart without
    # timing anything tightly.
    pool = make_pool(min_size=1, max_size=1, timeout=20)
    held = await pool.getconn()
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match="within 0s"):
        await pool.getconn(timeout=0)
    assert time.monotonic() - start < 5
    assert pool.stats().waiting == 0
    await pool.putconn(held)
    await pool.putconn(await pool.getconn(timeout=0))


async def test_a_waiter_gets_the_connection_another_borrower_returns(
    make_pool: MakePool, kind: Kind
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    await pool.wait(5)
    conn = await pool.getconn()

    async def give_back_later() -> None:
        await asyncio.sleep(0.2)
        await pool.putconn(conn)

    returner = kind.spawn(give_back_later())
    start = time.monotonic()
    again = await pool.getconn(timeout=5)
    assert again is conn
    assert 0.15 < time.monotonic() - start < 2
    await pool.putconn(again)
    await returner
    stats = pool.stats()
    assert stats.waits == 1
    assert 150 < stats.wait_p50_ms <= stats.wait_p99_ms <= stats.wait_max_ms < 2000


async def test_every_wait_sleeps_until_served_however_the_last_one_ended(
    make_pool: MakePool, kind: Kind
) -> None:
    # Pool reuses served waiters: each later wait by the same caller must still sleep
    # until a connection is handed over, after a served wait and after a timed-out one.
    pool = make_pool(min_size=1, max_size=1)
    await pool.wait(5)
    conn = await pool.getconn()

    async def give_back_later() -> None:
        await asyncio.sleep(0.2)
        await pool.putconn(conn)

    for ending in ("served", "served", "timed out", "served"):
        start = time.monotonic()
        if ending == "timed out":
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.2)
            assert time.monotonic() - start >= 0.19
            continue
        returner = kind.spawn(give_back_later())
        got = await pool.getconn(timeout=5)
        assert got is conn
        assert time.monotonic() - start >= 0.15, f"wait after a {ending} one did not sleep"
        await returner
    await pool.putconn(conn)
    assert pool.stats().waits == 3
    assert pool.stats().borrows == 4


async def test_waiters_time_out_at_their_own_deadlines_in_order(
    make_pool: MakePool, kind: Kind
) -> None:
    # One deadline keeper serves the whole queue (Pool: a thread; AsyncPool: a timer):
    # a later waiter with an earlier deadline must wake it early, and each must still
    # give up at its own deadline, not its neighbour's.
    pool = make_pool(min_size=1, max_size=1, timeout=10)
    conn = await pool.getconn()
    # 0.2 s apart: wide enough that queueing six threads one after another (a few ms
    # each) cannot reorder two deadlines on a loaded host.
    timeouts = [1.0, 0.2, 0.6, 0.4, 0.8, 0.4]
    ended: list[tuple[float, float, str]] = []

    async def waiter(limit: float) -> None:
        start = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            await pool.getconn(timeout=limit)
        ended.append((limit, time.monotonic() - start, str(info.value)))

    waiters = []
    for queued, limit in enumerate(timeouts, 1):
        waiters.append(kind.spawn(waiter(limit)))
        await wait_until(lambda queued=queued: pool.stats().waiting == queued)  # type: ignore[misc]
    await asyncio.gather(*waiters)
    assert [limit for limit, _, _ in ended] == sorted(timeouts)
    for limit, elapsed, message in ended:
        assert limit - 0.005 <= elapsed < limit + 0.25, (limit, elapsed)
        assert f"no connection free within {limit:g}s" in message
    stats = pool.stats()
    assert (stats.timeouts, stats.waiting) == (len(timeouts), 0)
    await pool.putconn(conn)
    await assert_books_balance(pool)


@pytest.mark.parametrize(
    ("max_waiting", "says"),
    [(1, "1 caller already waits "), (2, "2 callers already wait ")],
)
async def test_max_waiting_rejects_the_next_caller_at_once(
    make_pool: MakePool, kind: Kind, max_waiting: int, says: str
) -> None:
    pool = make_pool(min_size=1, max_size=1, max_waiting=max_waiting, timeout=20)
    conn = await pool.getconn()
    got: list[Any] = []

    async def borrow() -> None:
        got.append(await pool.getconn())

    waiters = [kind.spawn(borrow()) for _ in range(max_waiting)]
    await wait_until(lambda: pool.stats().waiting == max_waiting)
    start = time.monotonic()
    with pytest.raises(TooManyWaiters, match=f"max_waiting={max_waiting}") as caught:
        await pool.getconn()
    assert time.monotonic() - start < 5  # at once, not after the pool's 20 s
    assert says in str(caught.value)  # the count agrees in number with its noun
    await pool.putconn(conn)
    for i in range(max_waiting):
        await wait_until(lambda i=i: len(got) > i)  # type: ignore[misc]
        await pool.putconn(got[i])
    await asyncio.gather(*waiters)
    await assert_books_balance(pool)


async def test_waiters_are_served_first_come_first_served(make_pool: MakePool, kind: Kind) -> None:
    pool = make_pool(min_size=1, max_size=1, timeout=10)
    conn = await pool.getconn()
    order: list[int] = []

    async def borrower(i: int) -> None:
        c = await pool.getconn()
        order.append(i)
        await asyncio.sleep(0.002)
        await pool.putconn(c)

    borrowers = []
    for i in range(8):
        borrowers.append(kind.spawn(borrower(i)))
        await wait_until(lambda i=i: pool.stats().waiting == i + 1)  # type: ignore[misc]
    await pool.putconn(conn)
    await asyncio.gather(*borrowers)
    assert order == list(range(8))


async def test_opening_a_connection_does_not_block_borrowers(
    make_pool: MakePool, kind: Kind
) -> None:
    """New connections are opened in the background, never in a borrower's way."""
    slow = False

    async def configure(conn: Any) -> None:
        if slow:
            await kind.sleep(1.0)

    pool = make_pool(min_size=1, max_size=2, configure=kind.hook(configure))
    await pool.wait(5)
    first = await pool.getconn()
    slow = True

    async def borrow_once() -> None:
        await pool.putconn(await pool.getconn(timeout=5))

    opener = kind.spawn(borrow_once())  # waits while a second connection opens (1 s)
    await wait_until(lambda: pool.stats().opening == 1)
    start = time.monotonic()
    await pool.putconn(first)  # handed to the waiting borrower at once
    again = await pool.getconn(timeout=5)
    await pool.putconn(again)
    assert time.monotonic() - start < 0.5
    await opener
