"""AsyncDatabase: one object per name and process, one pool per running event loop.

What Database and AsyncDatabase share (one object per name, the settings check,
reset_all, the seed recipe's calls) is in tests/behaviour/test_database.py."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from poolkeeper import AsyncDatabase, AsyncPool, PoolError
from tests import async_helpers
from tests.async_helpers import backend_pid, fetchval, wait_until
from tests.conftest import backends, wait_for_child

driver = async_helpers.driver

Admin = psycopg.Connection[Any]


@pytest.fixture(autouse=True)
async def _forget_async_singletons() -> AsyncIterator[None]:
    yield
    await AsyncDatabase.reset_all(timeout=1.0)


def _gone(admin: Admin, name: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while backends(admin, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.one_model("asyncio", "AsyncDatabase keeps one pool per running event loop")
def test_use_outside_a_running_loop_says_what_to_do(dsn: str) -> None:
    db = AsyncDatabase("anoloop", dsn=dsn)
    with pytest.raises(PoolError, match="running event loop"):
        db.stats()
    asyncio.run(AsyncDatabase.reset_all())


@pytest.mark.one_model("asyncio", "AsyncDatabase keeps one pool per running event loop")
def test_every_asyncio_run_gets_its_own_pool(dsn: str, driver: str, admin: Admin) -> None:
    db = AsyncDatabase("aruns", dsn=dsn, min_size=2, max_size=2, driver=driver)

    async def use() -> tuple[AsyncPool, int]:
        pool = db.pool
        await pool.wait(5)
        async with db.connection() as conn:
            pid = backend_pid(conn)
        # The pool object itself, not id(pool): once the first one is collected, the
        # second may be allocated at the same address and get the same id.
        return pool, pid

    first_pool, first_pid = asyncio.run(use())
    # The first loop is gone: its pool closed its connections as the loop shut down.
    assert _gone(admin, "aruns")
    second_pool, second_pid = asyncio.run(use())
    assert first_pool is not second_pool
    assert first_pid != second_pid
    assert _gone(admin, "aruns")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(use())
        loop.run_until_complete(use())  # the same loop: the same pool, still open
        assert len(backends(admin, "aruns")) == 2
        loop.run_until_complete(AsyncDatabase.reset_all())
    finally:
        loop.close()
    assert _gone(admin, "aruns")


@pytest.mark.one_model("asyncio", "AsyncDatabase keeps one pool per running event loop")
def test_a_worker_thread_with_its_own_loop_has_its_own_pool(
    dsn: str, driver: str, admin: Admin
) -> None:
    db = AsyncDatabase("athreads", dsn=dsn, min_size=1, max_size=2, driver=driver)
    pids: dict[str, set[int]] = {"main": set(), "thread": set()}
    errors: list[BaseException] = []
    both_running = threading.Barrier(2, timeout=10)

    async def work(who: str) -> None:
        for i in range(50):
            async with db.connection() as conn:
                pids[who].add(backend_pid(conn))
                assert await fetchval(conn, "SELECT 1") == 1
            if i == 10:
                await asyncio.to_thread(both_running.wait)

    def thread_main() -> None:
        try:
            asyncio.run(work("thread"))
        except BaseException as exc:
            errors.append(exc)

    async def main() -> None:
        thread = threading.Thread(target=thread_main)
        thread.start()
        await work("main")
        await asyncio.to_thread(thread.join, 30)
        await db.close_all_connections()

    asyncio.run(main())
    assert errors == []
    # Two loops, two pools: never the same backend on both sides.
    assert pids["main"] and pids["thread"]
    assert not pids["main"] & pids["thread"]
    assert _gone(admin, "athreads")


@pytest.mark.one_model("asyncio", "AsyncDatabase keeps one pool per running event loop")
def test_close_all_connections_reaches_a_loop_still_running_in_another_thread(
    dsn: str, admin: Admin
) -> None:
    db = AsyncDatabase("afar", dsn=dsn, min_size=2, max_size=2)
    ready = threading.Event()
    stop = threading.Event()

    async def hold_a_loop() -> None:
        await db.pool.wait(5)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(hold_a_loop(),))
    thread.start()
    try:
        assert ready.wait(10)
        assert len(backends(admin, "afar")) == 2
        asyncio.run(db.close_all_connections(timeout=2))
        assert _gone(admin, "afar")
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.one_model("asyncio", "AsyncDatabase keeps one pool per running event loop")
async def test_pytest_asyncio_loops_are_handled_like_any_other(dsn: str, driver: str) -> None:
    # This test's loop is not the one the previous tests ran in; the singleton does not care.
    db = AsyncDatabase("atestloop", dsn=dsn, driver=driver)
    async with db.connection() as conn:
        assert await fetchval(conn, "SELECT 1") == 1
    assert db.pool._loop is asyncio.get_running_loop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.one_model(
    "asyncio",
    twin="tests/test_database.py::test_forked_child_gets_a_fresh_pool_and_the_parent_is_unaffected",
)
def test_forked_child_gets_a_fresh_pool_and_the_parent_is_unaffected(
    dsn: str, admin: Admin
) -> None:
    db = AsyncDatabase("aforky", dsn=dsn, min_size=2, max_size=2)

    async def parent_side() -> None:
        await db.pool.wait(5)
        held = await db.get_connection()
        parent_pids = set(backends(admin, "aforky"))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: a fresh loop, a fresh pool; report its backend
            os.close(read)
            try:

                async def child() -> str:
                    async with AsyncDatabase("aforky").connection() as conn:
                        return str(await fetchval(conn, "SELECT pg_backend_pid()"))

                message = asyncio.new_event_loop().run_until_complete(child())
            except BaseException as exc:
                message = f"error {exc!r}"
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        status = await asyncio.to_thread(wait_for_child, pid)
        with os.fdopen(read) as pipe:
            child_said = pipe.read()
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_said.isdigit(), child_said
        assert int(child_said) not in parent_pids
        # The parent's connections survived the child's exit.
        assert await fetchval(held, "SELECT 1") == 1
        await db.release_connection(held)
        async with db.connection() as conn:
            assert backend_pid(conn) in parent_pids
        await wait_until(lambda: set(backends(admin, "aforky")) == parent_pids)
        await db.close_all_connections()

    asyncio.run(parent_side())
