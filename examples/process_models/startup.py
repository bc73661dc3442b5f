"""What the example apps do at import when a test asks them to use the pool early."""

from __future__ import annotations

import os

import poolkeeper

__all__ = ["use_pool_at_import"]


def use_pool_at_import(db: poolkeeper.Database) -> None:
    """With ``POOLKEEPER_EXAMPLE_WARM=1``: borrow once now, in the process that will fork
    the workers (as an app that checks its database at start-up does), and write the
    backend pid to ``POOLKEEPER_EXAMPLE_PIDFILE`` so a test can see it survive them."""
    if os.environ.get("POOLKEEPER_EXAMPLE_WARM") != "1":
        return
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
    with open(os.environ["POOLKEEPER_EXAMPLE_PIDFILE"], "w", encoding="ascii") as out:
        out.write(str(row[0] if row else ""))
