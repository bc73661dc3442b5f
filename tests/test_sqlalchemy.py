"""SQLAlchemy engines on poolkeeper (poolkeeper.integrations.sqlalchemy), on the server:
ORM sessions under contention, fork, events, dispose, and async engines."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from poolkeeper import ConfigurationError
from poolkeeper.integrations.sqlalchemy import create_async_engine, create_engine
from tests.behaviour.test_prepared import (  # the fixture is shared, not redefined
    LEAKED,
    _set_name_function,  # noqa: F401
)


class Base(DeclarativeBase):
    pass


class Counter(Base):
    """One row per worker thread; each operation adds one to its own row."""

    __tablename__ = "pk_sa_counter"
    id: Mapped[int] = mapped_column(primary_key=True)
    hits: Mapped[int] = mapped_column(default=0)


def app_pids(admin: psycopg.Connection[Any], app: str) -> set[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        [app],
    ).fetchall()
    return {row[0] for row in rows}


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def engines() -> Iterator[list[sa.Engine]]:
    made: list[sa.Engine] = []
    yield made
    for engine in made:
        engine.pool.database.close_all_connections(2.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_orm_sessions_in_64_threads_over_10_connections_are_served_fairly(
    dsn: str, admin: psycopg.Connection[Any], engines: list[sa.Engine], driver: str
) -> None:
    """64 threads run ORM transactions over 10 connections for a fixed window: every
    thread finishes, and the least served thread completed at least half the median
    (FIFO waiting). The server's rows agree with what each thread counted."""
    app = f"pk-sa-fair-{driver}"
    engine = create_engine(dsn, driver=driver, min_size=10, max_size=10, timeout=30, name=app)
    engines.append(engine)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    threads_n = 64
    with Session(engine) as session, session.begin():
        session.add_all([Counter(id=i, hits=0) for i in range(threads_n)])
    done = [0] * threads_n
    start = threading.Barrier(threads_n + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait()
            while not stop.is_set():
                with Session(engine) as session, session.begin():
                    row = session.get(Counter, i)
                    assert row is not None
                    row.hits += 1
                    # Held a little, as a request would: the 10 connections stay busy.
                    session.execute(sa.text("SELECT pg_sleep(0.002)"))
                done[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    start.wait()
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not [t for t in threads if t.is_alive()], "a thread never finished"
    assert not errors, errors[:3]
    mean = statistics.mean(done)
    assert mean >= 4, f"too little work to judge fairness: {sorted(done)}"
    # Against the mean as well as the median: under QueuePool most threads complete one
    # transaction in the window (so the median is 1) while ten threads do the rest.
    assert min(done) >= mean / 2, f"a thread was starved: {sorted(done)}"
    assert min(done) >= statistics.median(done) / 2, f"a thread was starved: {sorted(done)}"
    with Session(engine) as session:
        hits = {r.id: r.hits for r in session.execute(sa.select(Counter.id, Counter.hits))}
    assert hits == dict(enumerate(done))
    assert len(app_pids(admin, app)) == 10
    Base.metadata.drop_all(engine)


def test_connect_event_runs_once_per_session_and_again_after_a_reset(
    dsn: str, admin: psycopg.Connection[Any], engines: list[sa.Engine]
) -> None:
    """The connect listener's SET is every borrower's baseline: not re-run per checkout
    (the backend is reused), and run again after poolkeeper reset the session."""
    app = "pk-sa-events"
    engine = create_engine(dsn, min_size=1, max_size=1, name=app)
    engines.append(engine)
    seen: dict[str, int] = {"connect": 0, "checkout": 0, "checkin": 0, "reset": 0}

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, record: Any) -> None:
        seen["connect"] += 1
        dbapi_conn.execute("SET search_path TO pk_sa_schema, public")

    for name in ("checkout", "checkin", "reset"):
        sa.event.listen(engine, name, lambda *a, _n=name: seen.__setitem__(_n, seen[_n] + 1))

    pids = set()
    for _ in range(5):
        with engine.connect() as conn:
            pids.add(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar())
            assert conn.execute(sa.text("SHOW search_path")).scalar() == "pk_sa_schema, public"
    assert len(pids) == 1
    assert seen == {"connect": 1, "checkout": 5, "checkin": 5, "reset": 5}
    # A borrower changes a setting: poolkeeper resets the session on return, and the
    # connect listener runs again on the same backend.
    with engine.connect() as conn:
        conn.execute(sa.text("SET work_mem = '7MB'"))
        conn.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() in pids
        assert conn.execute(sa.text("SHOW work_mem")).scalar() != "7MB"
        assert conn.execute(sa.text("SHOW search_path")).scalar() == "pk_sa_schema, public"
    assert seen["connect"] == 2
    assert app_pids(admin, app) == pids


def test_dispose_replaces_every_connection(
    dsn: str, admin: psycopg.Connection[Any], engines: list[sa.Engine]
) -> None:
    app = "pk-sa-dispose"
    engine = create_engine(dsn, min_size=2, max_size=2, name=app)
    engines.append(engine)
    with engine.connect() as a, engine.connect() as b:
        before = {c.execute(sa.text("SELECT pg_backend_pid()")).scalar() for c in (a, b)}
    engine.dispose()
    wait_for(lambda: not (app_pids(admin, app) & before), 5, "the old backends to go")
    with engine.connect() as conn:
        after = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    assert after not in before
    assert "size=2" in engine.pool.status()


def test_fork_child_gets_its_own_connections(
    dsn: str, admin: psycopg.Connection[Any], engines: list[sa.Engine]
) -> None:
    """A forked child using a warm engine opens its own connections; the parent's
    backends survive the child's exit and are still the ones the parent uses."""
    app = "pk-sa-fork"
    engine = create_engine(dsn, min_size=2, max_size=2, name=app)
    engines.append(engine)
    with engine.connect() as a, engine.connect() as b:
        parent = {c.execute(sa.text("SELECT pg_backend_pid()")).scalar() for c in (a, b)}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            with engine.connect() as conn:
                child = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
                os.write(write, str(child).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_pid = int(os.read(read, 64) or b"0")
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_pid and child_pid not in parent
    assert parent <= app_pids(admin, app)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() in parent


@pytest.mark.parametrize(
    ("arg", "value"),
    [("pool_pre_ping", True), ("pool_recycle", 60), ("pool_size", 5), ("poolclass", None)],
)
def test_sqlalchemy_pool_arguments_are_refused(dsn: str, arg: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=arg):
        create_engine(dsn, engine={arg: value})


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_async_engine_crud_concurrency_and_backend_reuse(
    dsn: str, admin: psycopg.Connection[Any], driver: str
) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession

    app = f"pk-sa-async-{driver}"
    engine = create_async_engine(dsn, driver=driver, min_size=2, max_size=2, name=app)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session, session.begin():
            session.add_all([Counter(id=i, hits=0) for i in range(4)])

        async def bump(i: int) -> int:
            async with AsyncSession(engine) as session, session.begin():
                row = await session.get(Counter, i % 4, with_for_update=True)
                assert row is not None
                row.hits += 1
                # json through the dialect's codecs, set once per connection
                await session.execute(sa.text("SELECT CAST(:j AS jsonb)"), {"j": "[1]"})
                return int((await session.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())

        pids = set(await asyncio.gather(*(bump(i) for i in range(40))))
        assert len(pids) <= 2
        async with AsyncSession(engine) as session:
            total = (await session.execute(sa.select(sa.func.sum(Counter.hits)))).scalar()
            await session.delete(await session.get(Counter, 0))
            await session.commit()
            assert await session.get(Counter, 0) is None
        assert total == 40
        # No reconnect per checkout: the same backends served everything.
        assert app_pids(admin, app) == pids
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        # dispose() replaces every connection of this loop's pool.
        await engine.dispose()
        # Polled without blocking the loop: the pool closes them in its own tasks.
        for _ in range(250):
            if not app_pids(admin, app) & pids:
                break
            await asyncio.sleep(0.02)
        assert not app_pids(admin, app) & pids, "the old backends are still there"
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar() not in pids
        assert "in use=0" in engine.pool.status()
    finally:
        await engine.pool.database.close_all_connections(2.0)  # type: ignore[attr-defined]


@pytest.mark.usefixtures("_set_name_function")
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_async_engine_statement_cache_reaches_no_next_borrower(
    dsn: str, admin: psycopg.Connection[Any], driver: str
) -> None:
    # The asyncpg dialect keeps a PreparedStatement per query text on the connection
    # and runs a cached one by its arguments alone; psycopg prepares repeated queries.
    app = f"pk-sa-prepared-{driver}"
    leaked = f"{app}-{LEAKED}"
    engine = create_async_engine(dsn, driver=driver, min_size=1, max_size=1, name=app)
    query = sa.text("SELECT pk_prep_f(:x)")

    def application_name(pid: int) -> Any:
        row = admin.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
        return row and row[0]

    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            for _ in range(8):
                await conn.execute(query, {"x": ""})
            await conn.commit()
        async with engine.connect() as conn:
            await conn.execute(query, {"x": leaked})
            await conn.commit()
            assert application_name(pid) == leaked  # it ran, on the one backend
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar() == pid
            assert application_name(pid) == app
    finally:
        await engine.pool.database.close_all_connections(2.0)  # type: ignore[attr-defined]


def test_no_password_in_the_engine_url_or_reprs() -> None:
    """The engine is given a DSN with a password: its URL, repr and pool status never
    show it (SQLAlchemy never sees the password: poolkeeper connects)."""
    engine = create_engine("postgresql://app:s3cr3t-pw@127.0.0.1:1/appdb", name="pk-sa-redact")
    db = engine.pool.database  # type: ignore[attr-defined]
    try:
        shown = " ".join([str(engine.url), repr(engine.url), repr(engine), repr(db)])
        assert "s3cr3t-pw" not in shown
        assert engine.url.render_as_string(hide_password=False) == (
            "postgresql+psycopg://app@127.0.0.1:1/appdb"
        )
    finally:
        db.close_all_connections(1.0)
