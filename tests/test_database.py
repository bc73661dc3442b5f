"""The Database singleton: one pool per name, per process, however it is reached."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import pytest

from poolkeeper import ConfigurationError, Database, PoolError
from tests.conftest import backends, settled_backends, wait_for_child


def test_same_object_on_every_call(dsn: str) -> None:
    db = Database(dsn=dsn)
    assert db is Database()
    assert db is Database("default")
    assert db is not Database("other", dsn=dsn)


def test_32_threads_racing_make_one_pool(dsn: str, admin: psycopg.Connection[Any]) -> None:
    barrier = threading.Barrier(32)
    seen: list[Database] = []

    def race() -> None:
        barrier.wait()
        db = Database("race", dsn=dsn, min_size=2, max_size=2)
        with db.connection() as conn:
            conn.execute("SELECT 1")
        seen.append(db)

    threads = [threading.Thread(target=race) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(seen) == 32
    assert len({id(db) for db in seen}) == 1
    # One pool of two connections, seen from the server's side: once min_size is open
    # (the 32 borrows may all be served by the first one while the second connects).
    seen[0].pool.wait(timeout=5)
    assert len(backends(admin, "race")) == 2


def test_seed_recipe_api(dsn: str, admin: psycopg.Connection[Any]) -> None:
    db = Database("seed", dsn=dsn, min_size=1, max_size=2)
    conn = db.get_connection()
    conn.execute("SELECT 1")
    db.release_connection(conn)
    assert db.stats().rollbacks == 1
    pid_before = backends(admin, "seed")
    db.close_all_connections()
    assert settled_backends(admin, "seed", []) == []
    with Database("seed").connection() as conn:
        assert conn.info.backend_pid not in pid_before  # a fresh pool


def test_conflicting_settings_raise_naming_the_setting(dsn: str) -> None:
    Database("conf", dsn=dsn, max_size=5)
    assert Database("conf") is Database("conf", max_size=5)
    with pytest.raises(ConfigurationError, match="max_size"):
        Database("conf", max_size=6)
    with pytest.raises(ConfigurationError, match="dsn"):
        Database("conf", dsn=dsn + "x")


def test_reset_all_forgets_every_singleton(dsn: str) -> None:
    first = Database("resettable", dsn=dsn, max_size=3)
    Database.reset_all()
    second = Database("resettable", dsn=dsn, max_size=4)
    assert first is not second


def test_transaction_and_connection_forms(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("DROP TABLE IF EXISTS pk_db_tx; CREATE TABLE pk_db_tx (x int)")
    db = Database(dsn=dsn)
    with db.transaction() as conn:
        conn.execute("INSERT INTO pk_db_tx VALUES (7)")
    with db.connection() as conn:
        assert conn.execute("SELECT x FROM pk_db_tx").fetchall() == [(7,)]


def test_releasing_a_foreign_connection_is_an_error(dsn: str) -> None:
    db = Database(dsn=dsn)
    with psycopg.connect(dsn) as stranger, pytest.raises(PoolError):
        db.release_connection(stranger)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_a_fresh_pool_and_the_parent_is_unaffected(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    db = Database("forky", dsn=dsn, min_size=2, max_size=2)
    db.pool.wait(5)
    held = db.get_connection()
    parent_pids = set(backends(admin, "forky"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the backend it used, or an error
        os.close(read)
        try:
            with Database("forky").connection() as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                message = str(row[0]) if row else "none"
            Database.reset_all()
        except BaseException as exc:  # report anything to the parent
            message = f"error {exc!r}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    status = wait_for_child(pid)
    with os.fdopen(read) as pipe:
        child_said = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_said.isdigit(), child_said
    assert int(child_said) not in parent_pids
    # The parent's connections survived the child's exit.
    assert held.execute("SELECT 1").fetchone() == (1,)
    db.release_connection(held)
    with db.connection() as conn:
        assert conn.info.backend_pid in parent_pids
    expected = sorted(parent_pids)
    assert settled_backends(admin, "forky", expected) == expected
