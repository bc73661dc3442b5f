"""A program that owns a pool and forks children that do what users' children do.

Run by tests/test_fork_safety.py as
``python tests/fork_scenario.py API DRIVER DSN NAME HOW:EXIT ...`` (API: ``pool``,
``database``, ``asyncpool`` or ``asyncdatabase``). It is a real program rather than a
forked pytest, so that a child can end the way programs end: by returning from
``main`` (the interpreter then finalises everything it inherited), by ``sys.exit``, or
by an uncaught exception.

The parent opens ``SIZE`` connections and borrows one. Then, for each ``HOW:EXIT``
(HOW: ``os.fork`` or ``multiprocessing``; EXIT: ``return``, ``sys.exit`` or
``raise``), it records its backends in pg_stat_activity and forks a child that closes
the inherited connection and the pool, collects garbage and ends that way. Once the
child has ended (waited for with a deadline), the parent runs ``SELECT
pg_backend_pid()`` on the connection it holds and on every idle one, looks at
pg_stat_activity again, and prints one JSON line::

    {"variant": "os.fork:return", "exitcode": 0, "before": [...],
     "queried": [...], "after": [...], "errors": [...]}

The child writes nothing to stdout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

import psycopg

from poolkeeper import AsyncDatabase, AsyncPool, Database, Pool

SIZE = 3
#: How long the parent waits for a child, or for one query, before giving up on it.
DEADLINE = 10.0
EXIT_CODES = {"return": 0, "sys.exit": 3, "raise": 1}


class WorkerFailed(Exception):
    """What ends a child on the ``raise`` exit: an exception nobody catches."""


class Scenario:
    """The parent's pool, the connection it holds, and what a child does with them."""

    def __init__(self, api: str, driver: str, dsn: str, name: str) -> None:
        self.api = api
        self.dsn = dsn
        self.name = name
        self.is_async = api.startswith("async")
        self.loop = asyncio.new_event_loop() if self.is_async else None
        settings: dict[str, Any] = {
            "min_size": SIZE,
            "max_size": SIZE,
            "driver": driver,
            "timeout": DEADLINE,
            # A lost connection must show as a changed pid, not be healed quietly.
            "max_idle": 3600.0,
        }
        self.db: Any = None
        self.pool: Any
        if api == "pool":
            self.pool = Pool(dsn, name=name, **settings)
        elif api == "database":
            self.db = Database(name, dsn=dsn, **settings)
            self.pool = self.db.pool
        elif api == "asyncpool":
            self.pool = self.run(_in_loop(lambda: AsyncPool(dsn, name=name, **settings)))
        elif api == "asyncdatabase":
            self.db = AsyncDatabase(name, dsn=dsn, **settings)
            self.pool = self.run(_in_loop(lambda: self.db.pool))
        else:
            raise SystemExit(f"unknown API {api!r}")
        if self.is_async:
            self.run(self.pool.wait(DEADLINE))
        else:
            self.pool.wait(DEADLINE)
        self.held = self.borrow()

    # -- either kind of pool -----------------------------------------------------------

    def run(self, coro: Any) -> Any:
        """Run ``coro`` in the parent's loop, within ``DEADLINE``."""
        assert self.loop is not None
        return self.loop.run_until_complete(asyncio.wait_for(coro, DEADLINE))

    def borrow(self) -> Any:
        if self.api == "database":
            return self.db.get_connection()
        if self.api == "asyncdatabase":
            return self.run(self.db.get_connection())
        return self.run(self.pool.getconn()) if self.is_async else self.pool.getconn()

    def give_back(self, conn: Any) -> None:
        if self.api == "database":
            self.db.release_connection(conn)
        elif self.api == "asyncdatabase":
            self.run(self.db.release_connection(conn))
        elif self.is_async:
            self.run(self.pool.putconn(conn))
        else:
            self.pool.putconn(conn)

    def backend_pid(self, conn: Any) -> int:
        """Asked of the server over ``conn``: raises if its session is gone."""
        if hasattr(conn, "fetchval"):  # asyncpg
            return int(self.run(conn.fetchval("SELECT pg_backend_pid()")))
        if self.is_async:

            async def ask() -> int:
                cur = await conn.execute("SELECT pg_backend_pid()")
                row = await cur.fetchone()
                return int(row[0])

            return int(self.run(ask()))
        if hasattr(conn, "execute"):  # psycopg 3
            return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        with conn.cursor() as cur:  # psycopg2
            cur.execute("SELECT pg_backend_pid()")
            return int(cur.fetchone()[0])

    def server_backends(self) -> list[int]:
        # A connection of its own each time: one kept open would be inherited by the
        # children, and it is no pool's, so nothing would make it inert there.
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as admin:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = %s ORDER BY pid",
                [self.name],
            ).fetchall()
        return [row[0] for row in rows]

    # -- the parent's side -------------------------------------------------------------

    def variant(self, how: str, exit_how: str) -> dict[str, Any] | None:
        """Fork one child and report on the parent's connections once it has ended.

        None in an ``os.fork`` child, which then returns from ``main``."""
        before = self.server_backends()
        if how == "os.fork":
            pid = os.fork()
            if pid == 0:
                self.child(exit_how)
                return None
            code = wait_for(pid)
        elif how == "multiprocessing":
            process = multiprocessing.get_context("fork").Process(
                target=self.child, args=(exit_how,)
            )
            process.start()
            process.join(DEADLINE)
            if process.is_alive():
                process.kill()
                process.join()
            code = process.exitcode if process.exitcode is not None else -1
        else:
            raise SystemExit(f"unknown way to fork {how!r}")
        queried, errors = self.query_each()
        return {
            "variant": f"{how}:{exit_how}",
            "exitcode": code,
            "before": before,
            "queried": queried,
            "after": self.server_backends(),
            "errors": errors,
        }

    def query_each(self) -> tuple[list[int], list[str]]:
        """A query on every connection the parent has: the held one and each idle one."""
        pids: list[int] = []
        errors: list[str] = []
        try:
            pids.append(self.backend_pid(self.held))
        except Exception as exc:
            errors.append(f"held connection: {type(exc).__name__}: {exc}")
            # Start the next variant from a whole pool again: the pool discards this
            # one and opens a replacement.
            self.give_back(self.held)
            self.held = None
        idle = []
        try:
            idle = [self.borrow() for _ in range(SIZE - 1)]
            for conn in idle:
                pids.append(self.backend_pid(conn))
        except Exception as exc:
            errors.append(f"idle connection: {type(exc).__name__}: {exc}")
        for conn in idle:
            self.give_back(conn)
        if self.held is None:
            self.held = self.borrow()
        return sorted(pids), errors

    def close(self) -> None:
        self.give_back(self.held)
        if self.api == "database":
            self.db.close_all_connections()
        elif self.api == "asyncdatabase":
            self.run(self.db.close_all_connections())
        elif self.is_async:
            self.run(self.pool.close())
        else:
            self.pool.close()
        if self.loop is not None:
            self.loop.close()

    # -- the child's side: what a user's worker does -----------------------------------

    def child(self, exit_how: str) -> None:
        """Close the inherited connection and the pool, collect garbage, end as told."""
        if self.is_async:
            asyncio.run(self._child_closes_async())
        else:
            self.held.close()
            if self.api == "database":
                self.db.close_all_connections()
            else:
                self.pool.close()
        del self.held, self.pool, self.db
        gc.collect()
        if exit_how == "sys.exit":
            sys.exit(EXIT_CODES["sys.exit"])
        if exit_how == "raise":
            raise WorkerFailed("the worker failed")

    async def _child_closes_async(self) -> None:
        # The held connection belongs to the parent's loop, which does not run here:
        # asyncpg's close() sends its goodbye, then fails waiting on the other loop.
        try:
            await asyncio.wait_for(self.held.close(), DEADLINE)
        except Exception as exc:
            print(f"child: closing the inherited connection: {exc!r}", file=sys.stderr)
        if self.api == "asyncdatabase":
            await self.db.close_all_connections()
        else:
            await self.pool.close()


async def _in_loop(make: Any) -> Any:
    # AsyncPool and AsyncDatabase.pool start their work in the loop they are made in.
    return make()


def wait_for(pid: int) -> int:
    """The child's exit code; kill it by its pid (and say -1) if it overstays."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def main() -> None:
    api, driver, dsn, name, *variants = sys.argv[1:]
    scenario = Scenario(api, driver, dsn, name)
    for variant in variants:
        how, exit_how = variant.split(":")
        report = scenario.variant(how, exit_how)
        if report is None:
            return  # a child, on the "return" exit: the program ends here
        # Flushed at once: a child forked later must not inherit and repeat this text.
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
    scenario.close()


if __name__ == "__main__":
    main()
