"""Bad luck: a fork while another thread holds a lock the child needs.

A connection returned to a pool that did not lend it is a behaviour of both pools:
tests/behaviour/test_lending.py."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from poolkeeper import AsyncDatabase, Database
from poolkeeper.redact import secrets
from poolkeeper.shutdown import install_shutdown_hook, uninstall_shutdown_hook


def _lock_of(name: str) -> threading.Lock:
    """The process-wide locks a forked child may need, by name."""
    locks: dict[str, Callable[[], Any]] = {
        "AsyncDatabase registry": lambda: AsyncDatabase._registry_lock,
        "Database registry": lambda: Database._registry_lock,
        "secrets registry": lambda: secrets._lock,
        "shutdown hook": lambda: __import__("poolkeeper.shutdown").shutdown._lock,
    }
    lock: threading.Lock = locks[name]()
    return lock


def _child_step(name: str, dsn: str) -> Callable[[], object]:
    """What the child does that needs the lock ``name``."""

    def async_db() -> object:
        async def use() -> object:
            db = AsyncDatabase("pk-fork-locks-async", dsn=dsn, min_size=1)
            async with db.connection() as conn:
                cur = await conn.execute("SELECT 1")
                return await cur.fetchone()

        return asyncio.run(use())

    def sync_db() -> object:
        with Database("pk-fork-locks", dsn=dsn, min_size=1).connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    def secret() -> object:
        secrets.add("a-secret-made-in-the-child")
        return "registered"

    def hook() -> object:
        install_shutdown_hook()
        uninstall_shutdown_hook()
        return "installed"

    return {
        "AsyncDatabase registry": async_db,
        "Database registry": sync_db,
        "secrets registry": secret,
        "shutdown hook": hook,
    }[name]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    "lock_name",
    ["AsyncDatabase registry", "Database registry", "secrets registry", "shutdown hook"],
)
def test_a_child_forked_while_another_thread_holds_a_lock_does_not_deadlock(
    dsn: str, lock_name: str
) -> None:
    lock = _lock_of(lock_name)
    step = _child_step(lock_name, dsn)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            said = f"ok: {step()!r}"
        except BaseException as exc:
            said = f"{type(exc).__name__}: {exc}"
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    release.set()
    thread.join(5)
    deadline = time.monotonic() + 15
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child deadlocked on the {lock_name} lock")
        time.sleep(0.02)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert said.startswith("ok: "), said
