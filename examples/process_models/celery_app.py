"""A Celery app whose tasks query through ``poolkeeper.Database()``.

Run a prefork worker with the broker in ``CELERY_BROKER_URL`` (Redis here) and the
database in ``DATABASE_URL``::

    celery -A examples.process_models.celery_app worker --pool=prefork --concurrency=4

No Celery hook is needed: the prefork pool forks its children from the main
process, and each child's first task builds that child's own pool (``Database()``
notices the fork). The pool closes with the process.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import poolkeeper
from examples.process_models.startup import use_pool_at_import

__all__ = ["app", "backend_pid"]

_BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("poolkeeper_example", broker=_BROKER, backend=_BROKER)
app.conf.update(
    task_default_queue=os.environ.get("POOLKEEPER_EXAMPLE_QUEUE", "poolkeeper-example"),
    result_expires=300,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

db = poolkeeper.Database()

use_pool_at_import(db)


@app.task(name="poolkeeper_example.backend_pid")
def backend_pid(n: int) -> dict[str, Any]:
    """Which worker process and which server backend ran task ``n``."""
    with db.transaction() as conn:
        row = conn.execute("SELECT pg_backend_pid(), %s::int * 2", [n]).fetchone()
    assert row is not None
    return {"worker": os.getpid(), "backend": row[0], "doubled": row[1]}
