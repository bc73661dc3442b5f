"""The sync Pool against a real server: lending, returning, waiting, closing."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from poolkeeper import PoolClosed, PoolError, PoolTimeout, TooManyWaiters
from tests.conftest import PoolFactory, backends, in_forked_child


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


def test_lends_the_drivers_own_connection_and_takes_it_back(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=2)
    pool.wait(5)
    conn = pool.getconn()
    assert isinstance(conn, psycopg.Connection)
    assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    assert pool.stats().in_use == 1
    pool.putconn(conn)
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.borrows) == (0, 1, 1)


def test_min_size_connections_are_opened_in_the_background(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    pool = make_pool(min_size=3, max_size=5, name="pk-minsize")
    pool.wait(5)
    assert len(backends(admin, "pk-minsize")) == 3
    assert pool.stats().size == 3


def test_open_transaction_is_rolled_back_on_return(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    admin.execute("DROP TABLE IF EXISTS pk_rollback; CREATE TABLE pk_rollback (x int)")
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    conn.execute("INSERT INTO pk_rollback VALUES (1)")
    pool.putconn(conn)
    assert admin.execute("SELECT count(*) FROM pk_rollback").fetchone() == (0,)
    again = pool.getconn()
    assert again is conn
    assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    pool.putconn(again)
    assert pool.stats().rollbacks == 1


def test_failed_transaction_is_rolled_back_and_the_connection_reused(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")
    pool.putconn(conn)
    with pool.connection() as again:
        assert again.info.backend_pid == pid
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_the_borrower_closed_is_replaced(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(5)
    conn = pool.getconn()
    old_pid = conn.info.backend_pid
    conn.close()
    pool.putconn(conn)
    wait_until(lambda: pool.stats().idle == 2)
    pids = set()
    held = [pool.getconn(), pool.getconn()]
    for c in held:
        assert not c.closed
        pids.add(c.info.backend_pid)
        pool.putconn(c)
    assert old_pid not in pids


def test_putconn_rejects_connections_it_did_not_lend(make_pool: PoolFactory, dsn: str) -> None:
    pool = make_pool(min_size=1, max_size=2)
    other = make_pool(min_size=1, max_size=1)
    with psycopg.connect(dsn) as stranger, pytest.raises(PoolError, match="did not lend"):
        pool.putconn(stranger)
    conn = other.getconn()
    with pytest.raises(PoolError, match="did not lend"):
        pool.putconn(conn)
    other.putconn(conn)
    with pytest.raises(PoolError, match="did not lend"):
        other.putconn(conn)  # twice


def test_exhausted_pool_times_out_on_time(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=2, max_size=2, timeout=0.4)
    held = [pool.getconn(), pool.getconn()]
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"max_size=2") as info:
        pool.getconn()
    elapsed = time.monotonic() - start
    assert 0.39 <= elapsed < 0.9
    assert "raise max_size" in str(info.value)
    start = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.1)
    assert time.monotonic() - start < 0.5
    for c in held:
        pool.putconn(c)
    assert pool.stats().timeouts == 2
    assert pool.stats().waiting == 0


def test_a_waiter_gets_the_connection_returned_by_another_thread(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1)
    pool.wait(5)
    conn = pool.getconn()
    threading.Timer(0.2, pool.putconn, [conn]).start()
    start = time.monotonic()
    again = pool.getconn(timeout=5)
    assert again is conn
    assert 0.15 < time.monotonic() - start < 2
    pool.putconn(again)
    assert pool.stats().waits == 1


def test_every_wait_sleeps_until_served_however_the_last_one_ended(
    make_pool: PoolFactory,
) -> None:
    # Served waiters are reused: each later wait in the same thread must still sleep
    # until a connection is handed over, after a served wait and after a timed-out one.
    pool = make_pool(min_size=1, max_size=1)
    pool.wait(5)
    conn = pool.getconn()
    for ending in ("served", "served", "timed out", "served"):
        start = time.monotonic()
        if ending == "timed out":
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=0.2)
            assert time.monotonic() - start >= 0.19
            continue
        threading.Timer(0.2, pool.putconn, [conn]).start()
        got = pool.getconn(timeout=5)
        assert got is conn
        assert time.monotonic() - start >= 0.15, f"wait after a {ending} one did not sleep"
    pool.putconn(conn)
    assert pool.stats().waits == 3
    assert pool.stats().borrows == 4


def test_each_waiter_times_out_at_its_own_deadline_whatever_its_place(
    make_pool: PoolFactory,
) -> None:
    # One thread keeps every deadline: a later caller with a shorter timeout must wake
    # it early, and the earlier caller must still get its full timeout.
    pool = make_pool(min_size=1, max_size=1, timeout=10)
    held = pool.getconn()
    outcomes: dict[str, float] = {}
    start = time.monotonic()

    def borrow(label: str, timeout: float) -> None:
        try:
            pool.putconn(pool.getconn(timeout=timeout))
        except PoolTimeout:
            outcomes[label] = time.monotonic() - start

    patient = threading.Thread(target=borrow, args=("patient", 1.0))
    patient.start()
    wait_until(lambda: pool.stats().waiting == 1)
    hasty = threading.Thread(target=borrow, args=("hasty", 0.2))
    hasty.start()
    hasty.join(5)
    patient.join(5)
    assert list(outcomes) == ["hasty", "patient"]
    assert 0.19 <= outcomes["hasty"] < 0.7
    assert 0.99 <= outcomes["patient"] < 1.6
    assert pool.stats().timeouts == 2
    pool.putconn(held)


def test_zero_timeout_fails_at_once_when_nothing_is_idle(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match="within 0s"):
        pool.getconn(timeout=0)
    assert time.monotonic() - start < 0.05
    assert pool.stats().waiting == 0
    pool.putconn(held)
    pool.putconn(pool.getconn(timeout=0))


def test_close_stops_the_deadline_thread(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1)
    name = f"poolkeeper-{pool.name}-deadlines"
    assert any(t.name == name for t in threading.enumerate())
    pool.close()
    assert not any(t.name == name and t.is_alive() for t in threading.enumerate())


def test_a_wait_cut_short_by_ctrl_c_leaves_the_queue_and_strands_nothing(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(min_size=1, max_size=1, timeout=10)
    held = pool.getconn()
    main = threading.get_ident()

    def press_ctrl_c() -> None:
        wait_until(lambda: pool.stats().waiting == 1)
        signal.pthread_kill(main, signal.SIGINT)

    # Python's own Ctrl-C handler, even if the suite was started with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c)
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            pool.getconn()
    finally:
        presser.join(5)
        signal.signal(signal.SIGINT, previous)
    assert pool.stats().waiting == 0
    # Returned now, the connection must not go to the caller who gave up.
    pool.putconn(held)
    assert pool.stats().idle == 1
    again = pool.getconn(timeout=1)
    assert again is held
    pool.putconn(again)


def test_max_waiting_rejects_the_next_caller_at_once(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1, max_waiting=2, timeout=5)
    conn = pool.getconn()
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(pool.getconn())) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: pool.stats().waiting == 2)
    start = time.monotonic()
    with pytest.raises(TooManyWaiters, match="max_waiting=2"):
        pool.getconn()
    assert time.monotonic() - start < 0.1
    pool.putconn(conn)
    wait_until(lambda: len(got) == 1)
    pool.putconn(got[0])
    wait_until(lambda: len(got) == 2)
    pool.putconn(got[1])
    for t in threads:
        t.join(5)


def test_waiters_are_served_first_come_first_served(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1, timeout=10)
    conn = pool.getconn()
    order: list[int] = []

    def borrower(i: int) -> None:
        c = pool.getconn()
        order.append(i)
        time.sleep(0.002)
        pool.putconn(c)

    threads = []
    for i in range(8):
        t = threading.Thread(target=borrower, args=(i,))
        t.start()
        threads.append(t)
        wait_until(lambda i=i: pool.stats().waiting == i + 1)
    pool.putconn(conn)
    for t in threads:
        t.join(10)
    assert order == list(range(8))


def test_opening_a_connection_does_not_block_borrowers(make_pool: PoolFactory) -> None:
    """New connections are opened by a background worker, never under the pool's lock."""
    slow = threading.Event()

    def configure(conn: psycopg.Connection[Any]) -> None:
        if slow.is_set():
            time.sleep(1.0)

    pool = make_pool(min_size=1, max_size=2, configure=configure)
    pool.wait(5)
    first = pool.getconn()
    slow.set()
    opener = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
    opener.start()  # waits while a second connection is being opened (1 s)
    wait_until(lambda: pool.stats().opening == 1)
    start = time.monotonic()
    pool.putconn(first)  # handed to the waiting thread at once
    again = pool.getconn(timeout=5)
    pool.putconn(again)
    assert time.monotonic() - start < 0.5
    opener.join(5)


def test_transaction_commits_on_success_and_rolls_back_on_error(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    admin.execute("DROP TABLE IF EXISTS pk_tx; CREATE TABLE pk_tx (x int)")
    pool = make_pool(min_size=1, max_size=1)
    with pool.transaction() as conn:
        conn.execute("INSERT INTO pk_tx VALUES (1)")
    with pytest.raises(RuntimeError), pool.transaction() as conn:
        conn.execute("INSERT INTO pk_tx VALUES (2)")
        raise RuntimeError("boom")
    assert admin.execute("SELECT array_agg(x) FROM pk_tx").fetchone() == ([1],)
    assert pool.stats().in_use == 0


def test_connection_block_returns_even_on_error(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(ZeroDivisionError), pool.connection():
        _ = 1 / 0
    assert pool.stats().in_use == 0
    assert pool.stats().idle == 1


def test_close_waits_for_borrowed_connections_then_closes_them(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=2, max_size=2)
    conn = pool.getconn()
    waiter_error: list[BaseException] = []
    other = pool.getconn()

    def wait_for_one() -> None:
        try:
            pool.getconn(timeout=10)
        except PoolError as exc:
            waiter_error.append(exc)

    t = threading.Thread(target=wait_for_one)
    t.start()
    wait_until(lambda: pool.stats().waiting == 1)
    threading.Timer(0.2, pool.putconn, [other]).start()
    start = time.monotonic()
    pool.close(timeout=0.6)
    elapsed = time.monotonic() - start
    t.join(5)
    assert isinstance(waiter_error[0], PoolClosed)
    assert 0.55 <= elapsed < 2.0  # `conn` was never returned: close waited out its deadline
    assert conn.closed
    assert other.closed
    assert pool.stats().size == 0
    pool.putconn(conn)  # the late return of a connection closed under its borrower is harmless
    with pytest.raises(PoolClosed):
        pool.getconn()


def test_wait_times_out_when_min_size_cannot_be_reached() -> None:
    from poolkeeper import Pool

    pool = Pool(
        "postgresql://nobody@127.0.0.1:1/none", min_size=1, connect_timeout=1, fail_fast_after=None
    )
    try:
        start = time.monotonic()
        with pytest.raises(PoolTimeout, match="min_size") as info:
            pool.wait(timeout=0.5)
        assert time.monotonic() - start < 1.5
        assert "last error" in str(info.value)
        assert info.value.__cause__ is not None
    finally:
        pool.close(0.5)


def test_wait_fails_fast_once_the_server_is_known_unreachable() -> None:
    from poolkeeper import Pool

    pool = Pool("postgresql://nobody@127.0.0.1:1/none", min_size=2, fail_fast_after=0.2)
    try:
        start = time.monotonic()
        with pytest.raises(PoolTimeout, match="refused") as info:
            pool.wait(timeout=10)
        assert time.monotonic() - start < 2.0
        assert info.value.__cause__ is not None
    finally:
        pool.close(0.5)


def test_application_name_defaults_to_the_pool_name(
    make_pool: PoolFactory, dsn: str, admin: psycopg.Connection[Any]
) -> None:
    make_pool(min_size=1, max_size=1, name="pk-appname").wait(5)
    assert len(backends(admin, "pk-appname")) == 1
    sep = "&" if "?" in dsn else "?"
    make_pool(dsn + f"{sep}application_name=mine", min_size=1, max_size=1).wait(5)
    assert len(backends(admin, "mine")) == 1


def test_resize_grows_now_and_shrinks_idle(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=2)
    pool.wait(5)
    pool.resize(4, 6)
    pool.wait(5)
    assert pool.stats().size == 4
    pool.resize(1, 2)
    wait_until(lambda: pool.stats().size == 2)
    assert pool.config.max_size == 2


def test_check_replaces_connections_that_died(
    make_pool: PoolFactory, admin: psycopg.Connection[Any]
) -> None:
    pool = make_pool(min_size=2, max_size=2, name="pk-check")
    pool.wait(5)
    old = set(backends(admin, "pk-check"))
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pk-check'"
    )
    wait_until(lambda: not backends(admin, "pk-check"))
    pool.check()
    wait_until(lambda: pool.stats().idle == 2)
    new = set(backends(admin, "pk-check"))
    assert len(new) == 2
    assert not new & old
    assert pool.stats().checks_failed == 2


def test_stats_snapshot_has_the_gauges_and_counters(make_pool: PoolFactory) -> None:
    pool = make_pool(min_size=1, max_size=3)
    pool.wait(5)
    with pool.connection(), pool.connection():
        stats = pool.stats()
        assert (stats.size, stats.in_use, stats.min_size, stats.max_size) == (2, 2, 1, 3)
    stats = pool.stats()
    assert stats.borrows == 2
    assert stats.connections_opened == 2
    assert stats.as_dict()["name"] == pool.name
    assert pool.health()["status"] == "ok"


def test_leaked_connection_is_logged_once_with_the_borrowers_stack(
    make_pool: PoolFactory, pk_logs: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(min_size=1, max_size=1, leak_threshold=0.1)

    def borrow_and_forget() -> Any:
        return pool.getconn()

    conn = borrow_and_forget()
    wait_until(lambda: pool.stats().leaks == 1)
    time.sleep(0.3)
    leaks = [r for r in pk_logs.records if "not returned" in r.getMessage()]
    assert len(leaks) == 1
    assert "borrow_and_forget" in leaks[0].getMessage()
    pool.putconn(conn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_pool_opened_before_fork_refuses_to_open_or_lend_in_the_child(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    pool.wait(5)
    # getconn trusts "closed" to cover "forked": open() in the child must not undo it.
    for line in in_forked_child(pool.open, pool.getconn):
        assert line.startswith("PoolClosed:") and "fork()" in line, line
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_pool_made_with_open_false_before_fork_opens_in_the_child(
    make_pool: PoolFactory,
) -> None:
    # The pre-fork server pattern: build at import time, open in each worker.
    pool = make_pool(min_size=1, max_size=1, open=False)

    def borrow_and_close() -> object:
        pool.open()
        with pool.connection() as conn:
            row = conn.execute("SELECT 1").fetchone()
        pool.close()
        return row

    assert in_forked_child(borrow_and_close) == ["ok: (1,)"]
    pool.open()
    with pool.connection() as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
