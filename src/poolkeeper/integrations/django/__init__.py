"""A Django database backend whose connections come from a poolkeeper pool.

``DATABASES = {"default": {"ENGINE": "poolkeeper.integrations.django", ...}}``: Django's
PostgreSQL backend (psycopg 3), except that a connection is borrowed from a
:class:`poolkeeper.Database` (one per alias and process) when Django first needs one
in a request, and given back when Django closes it at the request's end. Pool settings
go in ``OPTIONS["pool"]`` (a dict of :class:`poolkeeper.Pool` settings). See
``docs/integrations.md``.
"""

from __future__ import annotations

__all__: list[str] = []
