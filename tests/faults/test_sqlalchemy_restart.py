"""A SQLAlchemy engine on poolkeeper while its server restarts under load."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from poolkeeper.integrations.sqlalchemy import create_engine
from tests.faults.conftest import Report, ServerFactory
from tests.faults.load import restart_under_load

pytestmark = pytest.mark.fault


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

        def transaction() -> None:
            with Session(engine) as session, session.begin():
                session.execute(sa.text("SELECT pg_sleep(0.005)"))

        run = restart_under_load(server, transaction, timeout=timeout)
        before = [a for a in run.attempts if a.started + a.elapsed < run.down_at]
        report["errors_during_outage"] = sum(1 for a in run.attempts if a.error)
        report["transactions_after_recovery"] = len(run.late)
        assert before and not [a for a in before if a.error]
        run.assert_recovered(timeout)
    finally:
        engine.pool.database.close_all_connections(1.0)  # type: ignore[attr-defined]
