"""The FastAPI example under a real uvicorn server on a loopback port, driven by httpx."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI

from examples.fastapi_app.app import create_app
from poolkeeper import AsyncDatabase
from poolkeeper.integrations.fastapi import STATE_KEY
from tests.conftest import backends

APP_NAME = "pk-fastapi-e2e"


class RunningServer:
    """uvicorn serving ``app`` in a thread (its own event loop) on a free loopback port."""

    def __init__(self, app: FastAPI) -> None:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
        # TCP, and without it every response waits out the client's delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; no race for it
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", backlog=1024, timeout_keep_alive=60
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture
def served(dsn: str, admin: psycopg.Connection[Any]) -> Iterator[tuple[RunningServer, FastAPI]]:
    admin.execute("DROP TABLE IF EXISTS pk_example_counter")
    # Server and client share this process: hand the GIL over sooner than every 5 ms.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    app = create_app(dsn, name=APP_NAME, max_size=5, timeout=30)
    server = RunningServer(app)
    server.start()
    try:
        yield server, app
    finally:
        if server.thread.is_alive():
            server.stop()
        asyncio.run(AsyncDatabase.reset_all(timeout=1.0))
        sys.setswitchinterval(interval)


def _wait_gone(admin: psycopg.Connection[Any], name: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := backends(admin, name)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


@pytest.mark.one_model("asyncio", "FastAPI is an asyncio framework")
def test_200_concurrent_requests_over_5_connections_then_a_clean_shutdown(
    served: tuple[RunningServer, FastAPI], admin: psycopg.Connection[Any]
) -> None:
    server, app = served

    async def drive() -> tuple[list[httpx.Response], list[httpx.Response], dict[str, Any]]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            work = await asyncio.gather(
                *(client.get("/work", params={"ms": 5}) for _ in range(200))
            )
            counts = await asyncio.gather(*(client.post("/counter") for _ in range(20)))
            health = (await client.get("/health")).json()
        return work, counts, health

    work, counts, health = asyncio.run(drive())
    assert [r.status_code for r in work] == [200] * 200
    pids = {r.json()["backend_pid"] for r in work}
    assert 1 <= len(pids) <= 5
    assert sorted(r.json()["n"] for r in counts) == list(range(1, 21))
    stats = health["stats"]
    assert health["status"] == "ok"
    assert stats["max_size"] == 5
    assert stats["size"] <= 5
    assert stats["borrows"] >= 220
    assert stats["in_use"] == 0
    assert stats["timeouts"] == 0
    assert len(backends(admin, APP_NAME)) <= 5

    server.stop()
    assert not server.thread.is_alive()
    # The lifespan closed the pool: the server sees none of its sessions any more.
    assert _wait_gone(admin, APP_NAME) == []
    db = getattr(app.state, STATE_KEY)
    assert isinstance(db, AsyncDatabase)
    assert db._pools == {}


def test_a_client_that_gives_up_does_not_cost_a_connection(
    served: tuple[RunningServer, FastAPI], admin: psycopg.Connection[Any]
) -> None:
    server, _ = served

    async def drive() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=0.05) as impatient:
            results = await asyncio.gather(
                *(impatient.get("/work", params={"ms": 300}) for _ in range(20)),
                return_exceptions=True,
            )
        assert all(isinstance(r, httpx.TimeoutException) for r in results)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 10
            while True:
                health: dict[str, Any] = (await client.get("/health")).json()
                if health["stats"]["in_use"] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            ok = await asyncio.gather(*(client.get("/work") for _ in range(20)))
            assert [r.status_code for r in ok] == [200] * 20
        return health

    health = asyncio.run(drive())
    stats = health["stats"]
    assert stats["in_use"] == 0
    assert stats["size"] <= 5
    assert len(backends(admin, APP_NAME)) <= 5
