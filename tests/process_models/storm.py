"""A fork storm, run as its own process: ``python -m tests.process_models.storm DSN``.

The parent keeps a warm ``Database()`` and queries between forks, holding one borrowed
connection across every fork (as a thread of a server would). Each of 50 children
queries through ``Database()``, then leaves in one of four ways, all of which run the
interpreter's normal shutdown: ``sys.exit``, an uncaught exception, closing the pool
and collecting garbage, or closing the connection it inherited from the parent (which
must not end the parent's session). At most 8 children live at once. The parent prints
what it saw as JSON on its last line.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

import poolkeeper

CHILDREN = 50
AT_ONCE = 8


def _count(db: poolkeeper.Database, app_name: str) -> int:
    with db.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            [app_name],
        ).fetchone()
    return int(row[0]) if row else -1


def _child(n: int, held: Any, report: int) -> None:
    """Query through Database() in the child, report, and leave in way ``n % 4``."""
    db = poolkeeper.Database()
    try:
        with db.connection() as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        line = f"ok {os.getpid()} {row[0] if row else 0}\n"
    except Exception as exc:
        line = f"fail {type(exc).__name__}: {exc}\n".replace("\n", " ") + "\n"
    os.write(report, line.encode())
    way = n % 4
    if way == 1:
        raise RuntimeError("a child that dies of an exception")
    if way == 2:
        db.close_all_connections()
        gc.collect()
    if way == 3:
        held.close()  # the parent's connection: must not end the parent's session
    sys.exit(0)


def main(dsn: str, app_name: str) -> dict[str, Any]:
    """Run the storm; return what the parent saw."""
    os.environ["DATABASE_URL"] = dsn
    db = poolkeeper.Database(min_size=2, max_size=4)
    held = db.get_connection()
    parent_backends = {held.info.backend_pid}
    with db.connection() as conn:
        parent_backends.add(conn.info.backend_pid)
    read, write = os.pipe()
    exit_codes: list[int] = []
    live: list[int] = []
    counts: list[int] = []
    for n in range(CHILDREN):
        counts.append(_count(db, app_name))
        if len(live) >= AT_ONCE:
            _, status = os.waitpid(live.pop(0), 0)
            exit_codes.append(os.waitstatus_to_exitcode(status))
        pid = os.fork()
        if pid == 0:
            os.close(read)
            # Never returns: sys.exit, or an exception that ends the script (exit code 1).
            _child(n, held, write)
        live.append(pid)
    for pid in live:
        _, status = os.waitpid(pid, 0)
        exit_codes.append(os.waitstatus_to_exitcode(status))
    os.close(write)
    with os.fdopen(read) as pipe:
        reports = pipe.read().splitlines()
    held_works = held.execute("SELECT 1").fetchone() == (1,)
    db.release_connection(held)
    deadline = time.monotonic() + 10
    while (final := _count(db, app_name)) > len(parent_backends) and time.monotonic() < deadline:
        time.sleep(0.05)
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [list(parent_backends)]
        ).fetchall()
    return {
        "reports": reports,
        "exit_codes": sorted(exit_codes),
        "held_works": held_works,
        "parent_backends_alive": len(rows) == len(parent_backends),
        "max_count": max(counts),
        "final_count": final,
        "parent_size": len(parent_backends),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
