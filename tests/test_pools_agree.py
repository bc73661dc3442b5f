"""Edge behaviours each pool once handled its own way, written once for both."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncPool, Pool, PoolClosed, PoolError
from tests.conftest import in_forked_child

KINDS = ["Pool", "AsyncPool"]


async def _call(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _make(kind: str, dsn: str, name: str) -> Pool | AsyncPool:
    return (Pool if kind == "Pool" else AsyncPool)(dsn, name=name, min_size=1, timeout=5.0)


@pytest.mark.parametrize("kind", KINDS)
def test_after_close_only_connections_closed_under_their_borrower_are_taken_back(
    dsn: str, kind: str
) -> None:
    """A borrower whose connection close() took may still return it; a connection the
    pool never lent is refused as ever, closed pool or not."""

    async def scenario() -> None:
        pool = _make(kind, dsn, f"pk-agree-close-{kind.lower()}")
        borrowed = await _call(pool.getconn())
        await _call(pool.close(timeout=0.05))
        await _call(pool.putconn(borrowed))  # closed under its borrower: fine
        with psycopg.connect(dsn) as stranger, pytest.raises(PoolError, match="did not lend"):
            await _call(pool.putconn(stranger))
        with pytest.raises(PoolError, match="did not lend"):
            await _call(pool.putconn(borrowed))  # the second time

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_a_forked_child_is_told_the_pool_belongs_to_its_parent(dsn: str, kind: str) -> None:
    """In a forked child, the parent's pool says so on open() and getconn(): not that
    it was opened in another event loop, though for an AsyncPool it was."""
    loop = asyncio.new_event_loop()
    pool = _make(kind, dsn, f"pk-agree-fork-{kind.lower()}")
    try:
        loop.run_until_complete(_call(pool.open()))
        loop.run_until_complete(_call(pool.wait(5)))

        def in_child(method: str) -> Any:
            return lambda: asyncio.run(_call(getattr(pool, method)()))

        said = in_forked_child(in_child("open"), in_child("getconn"))
    finally:
        loop.run_until_complete(_call(pool.close(timeout=1.0)))
        loop.close()
    for line in said:
        assert line.startswith(f"{PoolClosed.__name__}: "), said
        assert "fork()" in line
