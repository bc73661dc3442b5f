"""Driver adapters. Each is imported only when a pool asks for it, so an extra
that is not installed costs nothing until it is used."""

from __future__ import annotations

import importlib
from typing import Any

from poolkeeper.drivers.base import (
    BROKEN,
    IDLE,
    IN_TRANSACTION,
    AsyncDriver,
    ConnectSpec,
    SyncDriver,
)
from poolkeeper.errors import ConfigurationError

__all__ = [
    "BROKEN",
    "IDLE",
    "IN_TRANSACTION",
    "AsyncDriver",
    "ConnectSpec",
    "SyncDriver",
    "load_async_driver",
    "load_sync_driver",
]

# name -> (module, class, pip extra)
_SYNC = {
    "psycopg": ("poolkeeper.drivers.psycopg_sync", "PsycopgDriver", "binary"),
    "psycopg2": ("poolkeeper.drivers.psycopg2_sync", "Psycopg2Driver", "psycopg2"),
}
_ASYNC = {
    "psycopg": ("poolkeeper.drivers.psycopg_async", "AsyncPsycopgDriver", "binary"),
    "asyncpg": ("poolkeeper.drivers.asyncpg_async", "AsyncpgDriver", "asyncpg"),
}


def _load(table: dict[str, tuple[str, str, str]], name: str, kind: str) -> Any:
    if name not in table:
        choices = ", ".join(sorted(table))
        raise ConfigurationError(f"driver: {name!r} has no {kind} implementation; choose {choices}")
    module_name, class_name, extra = table[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"driver: {name!r} needs a package that is not installed ({exc.name}); "
            f"pip install 'poolkeeper[{extra}]'"
        ) from None
    return getattr(module, class_name)()


def load_sync_driver(name: str) -> SyncDriver[Any]:
    """The blocking driver called ``name``, or ``ConfigurationError`` saying what to install."""
    driver: SyncDriver[Any] = _load(_SYNC, name, "sync")
    return driver


def load_async_driver(name: str) -> AsyncDriver[Any]:
    """The asyncio driver called ``name``, or ``ConfigurationError`` saying what to install."""
    driver: AsyncDriver[Any] = _load(_ASYNC, name, "asyncio")
    return driver
