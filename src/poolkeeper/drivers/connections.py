"""The connection type each driver lends, for type checkers only.

``Pool``, ``AsyncPool``, ``Database`` and ``AsyncDatabase`` are generic in the
connection type; their constructors pick one of these from ``driver=``. Nothing
here is imported at run time, so no driver is loaded for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeAlias

    import asyncpg
    import psycopg
    import psycopg2.extensions

    #: ``driver="psycopg"`` (the default) with ``Pool`` / ``Database``.
    PsycopgConnection: TypeAlias = psycopg.Connection[Any]
    #: ``driver="psycopg"`` (the default) with ``AsyncPool`` / ``AsyncDatabase``.
    PsycopgAsyncConnection: TypeAlias = psycopg.AsyncConnection[Any]
    #: ``driver="psycopg2"``.
    Psycopg2Connection: TypeAlias = psycopg2.extensions.connection
    #: ``driver="asyncpg"``.
    AsyncpgConnection: TypeAlias = asyncpg.Connection
