"""A SQLAlchemy engine on poolkeeper while its server restarts under load."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from poolkeeper.integrations.sqlalchemy import create_engine
from tests.faults.conftest import Report, ServerFactory

pytestmark = pytest.mark.fault


@dataclass
class Attempt:
    """One ORM transaction a worker thread tried."""

    started: float
    elapsed: float
    error: str | None


def test_orm_sessions_through_a_server_restart(own_server: ServerFactory, report: Report) -> None:
    """Fast shutdown and start while 8 threads run ORM sessions over 4 connections:
    errors only while the server is down, nobody hangs, every transaction started 1 s
    after the server is back succeeds."""
    server = own_server()
    timeout = 3.0
    engine = create_engine(
        server.dsn, name="fault-sa-restart", min_size=4, max_size=4, timeout=timeout
    )
    try:
        engine.pool.database.pool.wait(timeout=10)  # type: ignore[attr-defined]
        stop = threading.Event()
        attempts: list[Attempt] = []
        lock = threading.Lock()

        def worker() -> None:
            while not stop.is_set():
                started = time.monotonic()
                error = None
                try:
                    with Session(engine) as session, session.begin():
                        session.execute(sa.text("SELECT pg_sleep(0.005)"))
                except Exception as exc:
                    error = type(exc).__name__
                with lock:
                    attempts.append(Attempt(started, time.monotonic() - started, error))
                if error:
                    time.sleep(0.01)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        down_at = time.monotonic()
        server.stop("fast")
        time.sleep(0.5)
        server.start()
        up_at = time.monotonic()
        time.sleep(2.5)
        stop.set()
        for thread in threads:
            thread.join(timeout + 2)
            assert not thread.is_alive(), "a worker hung"

        before = [a for a in attempts if a.started + a.elapsed < down_at]
        late = [a for a in attempts if a.started >= up_at + 1.0]
        report["errors_during_outage"] = sum(1 for a in attempts if a.error)
        report["transactions_after_recovery"] = len(late)
        assert before and not [a for a in before if a.error]
        assert late, "no transaction ran after the restart"
        assert [a for a in late if a.error] == []
        assert max(a.elapsed for a in attempts) < timeout + 1.0
    finally:
        engine.pool.database.close_all_connections(1.0)  # type: ignore[attr-defined]
