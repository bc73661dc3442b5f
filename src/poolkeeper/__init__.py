"""poolkeeper: one PostgreSQL connection pool per Python process, done right.

``Database()`` is the process-wide shared pool (sync); ``AsyncDatabase()`` its
asyncio twin. ``Pool``/``AsyncPool`` are pools whose lifecycle you own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from poolkeeper.config import PoolConfig
from poolkeeper.database import Database
from poolkeeper.errors import (
    ConfigurationError,
    ConnectionFailed,
    NoReplicaAvailable,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
    WrongEventLoop,
)
from poolkeeper.pool import Pool
from poolkeeper.shutdown import install_shutdown_hook, uninstall_shutdown_hook
from poolkeeper.stats import PoolStats

if TYPE_CHECKING:
    from poolkeeper.async_database import AsyncDatabase
    from poolkeeper.async_pool import AsyncPool

__all__ = [
    "AsyncDatabase",
    "AsyncPool",
    "ConfigurationError",
    "ConnectionFailed",
    "Database",
    "NoReplicaAvailable",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolStats",
    "PoolTimeout",
    "TooManyWaiters",
    "WrongEventLoop",
    "install_shutdown_hook",
    "uninstall_shutdown_hook",
]

__version__ = "0.1.0"

logging.getLogger("poolkeeper").addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # The asyncio half is imported on first use, so sync-only programs never load asyncio code.
    if name == "AsyncPool":
        from poolkeeper.async_pool import AsyncPool  # noqa: PLC0415

        return AsyncPool
    if name == "AsyncDatabase":
        from poolkeeper.async_database import AsyncDatabase  # noqa: PLC0415

        return AsyncDatabase
    raise AttributeError(f"module 'poolkeeper' has no attribute {name!r}")
