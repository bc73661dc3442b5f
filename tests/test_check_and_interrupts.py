"""``pool.check()`` and interrupted I/O, for both pools.

Each behaviour is written once and runs against ``Pool`` and ``AsyncPool``: the
scenario is a coroutine, and ``_call`` awaits what the async pool returns.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, Pool, PoolTimeout
from tests.async_helpers import POOL_CLASS_NAMES, maybe_await, pool_of
from tests.conftest import backends

KINDS = POOL_CLASS_NAMES


def _gone_and_replaced(
    admin: psycopg.Connection[Any], name: str, old: set[int], size: int, timeout: float = 5.0
) -> set[int]:
    """The pool's backends once none of ``old`` is left and ``size`` are open again."""
    deadline = time.monotonic() + timeout
    while True:
        now = set(backends(admin, name))
        if (not now & old and len(now) == size) or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_check_runs_the_check_callable(dsn: str, admin: psycopg.Connection[Any], kind: str) -> None:
    """``check()`` judges idle connections with the pool's own ``check=`` callable (not
    only a ping): those it rejects are closed on the server and replaced."""
    name = f"pk-check-callable-{kind.lower()}"
    failing = threading.Event()

    def check(conn: object) -> None:
        if failing.is_set():
            raise RuntimeError("rejected by check=")

    async def scenario() -> tuple[set[int], set[int]]:
        pool = pool_of(kind, dsn, name, min_size=2, max_size=2, check=check)
        try:
            await maybe_await(pool.wait(5))
            old = set(backends(admin, name))
            failing.set()
            await maybe_await(pool.check())
            failing.clear()
            await maybe_await(pool.wait(5))
            return old, _gone_and_replaced(admin, name, old, 2)
        finally:
            await maybe_await(pool.close(timeout=1.0))

    old, now = asyncio.run(scenario())
    assert len(old) == 2
    assert not now & old
    assert len(now) == 2


class _Interrupter:
    """A ``check=``/``configure=`` hook that raises ``interrupt`` once, when armed."""

    def __init__(self, interrupt: type[BaseException]) -> None:
        self.interrupt = interrupt
        self.armed = threading.Event()

    def __call__(self, conn: object) -> None:
        if self.armed.is_set():
            self.armed.clear()
            raise self.interrupt


async def _interrupted_in_check(pool: Pool | AsyncPool, hook: _Interrupter) -> None:
    time.sleep(0.02)  # past check_after: the next borrow checks first
    hook.armed.set()
    with pytest.raises(hook.interrupt):
        await maybe_await(pool.getconn())


async def _interrupted_in_return(pool: Pool | AsyncPool, hook: _Interrupter) -> None:
    conn = await maybe_await(pool.getconn())
    hook.armed.set()
    with pytest.raises(hook.interrupt):
        await maybe_await(pool.putconn(conn))


# Where the interrupt lands, and the settings that put the hook there: the check before
# lending, or configure=, which runs after the reset on return.
Interrupted = Callable[[Pool | AsyncPool, _Interrupter], Awaitable[None]]
WHERE: dict[str, tuple[Interrupted, str, dict[str, Any]]] = {
    "check": (_interrupted_in_check, "check", {"check_after": 0.01}),
    "return": (_interrupted_in_return, "configure", {"reset": "always"}),
}


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupted_check_or_clean_up_retires_the_connection(
    dsn: str, admin: psycopg.Connection[Any], kind: str, where: str
) -> None:
    """Interrupted (Ctrl-C in a thread, cancellation in a task) during the check before
    lending or the clean-up on return, the connection is closed and its slot freed:
    with ``max_size=1`` the next borrow gets a new backend, not a timeout."""
    name = f"pk-interrupted-{where}-{kind.lower()}"
    interrupted, hook_setting, settings = WHERE[where]
    hook = _Interrupter(KeyboardInterrupt if kind == "Pool" else asyncio.CancelledError)

    async def scenario() -> tuple[int, int]:
        pool = pool_of(kind, dsn, name, min_size=1, max_size=1, **{hook_setting: hook}, **settings)
        try:
            await maybe_await(pool.wait(5))
            (old,) = backends(admin, name)
            await interrupted(pool, hook)
            try:
                conn = await maybe_await(pool.getconn(timeout=3))
            except PoolTimeout:
                pytest.fail("the interrupted connection still holds the pool's only slot")
            await maybe_await(pool.putconn(conn))
            (new,) = _gone_and_replaced(admin, name, {old}, 1)
            return old, new
        finally:
            await maybe_await(pool.close(timeout=1.0))

    old, new = asyncio.run(scenario())
    assert new != old
