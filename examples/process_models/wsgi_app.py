"""A plain WSGI app on ``poolkeeper.Database()``, for gunicorn and any WSGI server.

Run it with the database in ``DATABASE_URL``::

    DATABASE_URL=postgresql://postgres@127.0.0.1/postgres \\
        gunicorn --preload --workers 4 examples.process_models.wsgi_app:app

The module-level ``db`` is the popular recipe's shape: made once at import, which
with ``--preload`` means in gunicorn's master, before it forks the workers. Nothing
else is needed: each worker's first request builds that worker's own pool, and the
master's connections (if it used any) stay the master's.

``GET /`` answers ``{"worker": <pid>, "backend": <server pid>, "search_path": ...}``.
``GET /dirty`` changes the session (``SET search_path``) and answers the same, so a
test can show that one request's session state never reaches the next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import poolkeeper
from examples.process_models.startup import use_pool_at_import

__all__ = ["app", "db"]

# psycopg 3 unless told otherwise; the app uses only DB-API calls, so psycopg2 works too.
db = poolkeeper.Database(driver=os.environ.get("POOLKEEPER_EXAMPLE_DRIVER", "psycopg"))

use_pool_at_import(db)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answer which worker and which backend served the request."""
    with db.connection() as conn, conn.cursor() as cur:
        if environ.get("PATH_INFO") == "/dirty":
            cur.execute("SET search_path TO pg_catalog")
        cur.execute("SELECT pg_backend_pid(), current_setting('search_path')")
        row = cur.fetchone()
    assert row is not None
    body = json.dumps({"worker": os.getpid(), "backend": row[0], "search_path": row[1]})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]
