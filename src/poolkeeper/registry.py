"""``NamedSingleton``: one object per name and process, the registry behind
``Database`` and ``AsyncDatabase``.

The first call for a name takes the settings; later calls return the same
object, and raise ``ConfigurationError`` if they ask for different settings
(never silently ignored). Creation is thread-safe: racing threads make one.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from poolkeeper import forking
from poolkeeper.config import PoolConfig, env_url_name
from poolkeeper.errors import ConfigurationError
from poolkeeper.pool_core import PoolCore
from poolkeeper.redact import redact
from poolkeeper.replicas import ReplicaRouter, check_replica_settings

__all__ = [
    "NamedSingleton",
    "check_same_settings",
    "default_target",
    "overall_status",
    "replica_health",
]


def overall_status(primary: object, replicas: Sequence[object]) -> str:
    """A facade's ``health()["status"]``: the primary pool's, lowered to ``degraded``
    while a replica pool is not ``ok`` (reads suffer, writes do not)."""
    if primary == "ok" and any(status != "ok" for status in replicas):
        return "degraded"
    return str(primary)


def replica_health(
    pool_report: dict[str, object], router: ReplicaRouter, index: int
) -> dict[str, object]:
    """One replica's ``health()`` entry: its pool's report plus ``routing``, ``lag``
    and ``routing_error``; ``status`` says ``lagging`` while reads skip it for lag."""
    pool_report.update(router.report(index))
    if pool_report["routing"] == "lagging" and pool_report["status"] == "ok":
        pool_report["status"] = "lagging"
    return pool_report


_S = TypeVar("_S", bound="NamedSingleton")
_P = TypeVar("_P", bound=PoolCore)
_log = logging.getLogger("poolkeeper.database")

# Every NamedSingleton subclass, for remaking their registry locks after fork().
_classes: weakref.WeakSet[type[NamedSingleton]] = weakref.WeakSet()


def default_target(config: PoolConfig, env: Mapping[str, str] | None = None) -> str:
    """Where a config with no DSN connects: libpq's defaults under its ``PG*`` variables
    and ``connect_kwargs``, as ``host=... port=... dbname=... user=...`` (no password)."""
    env = os.environ if env is None else env
    kwargs = config.connect_kwargs if isinstance(config.connect_kwargs, Mapping) else {}

    def pick(key: str, var: str) -> str:
        return str(kwargs.get(key) or env.get(var, "").strip())

    try:
        os_user = getpass.getuser()
    except (OSError, KeyError):
        os_user = "(this OS user)"
    user = pick("user", "PGUSER") or os_user
    parts = [
        f"host={pick('host', 'PGHOST') or '(local socket)'}",
        f"port={pick('port', 'PGPORT') or '5432'}",
        f"dbname={pick('dbname', 'PGDATABASE') or user}",
        f"user={user}",
    ]
    if env.get("PGSERVICE", "").strip():
        parts.append(f"service={env['PGSERVICE'].strip()}")
    return redact(" ".join(parts))


def check_same_settings(existing: PoolConfig, requested: PoolConfig, what: str) -> None:
    """Raise ``ConfigurationError`` if ``requested`` explicitly asks for other settings."""
    for key in sorted(requested.explicit):
        mine, theirs = getattr(existing, key), getattr(requested, key)
        if mine != theirs:
            if key == "dsn":
                mine, theirs = existing.redacted_dsn(), requested.redacted_dsn()
            raise ConfigurationError(
                f"{key}: {what} already exists with {key}={redact(repr(mine))}, and this call "
                f"asks for {key}={redact(repr(theirs))}. Pass the same settings everywhere "
                f"(or none), use another name= for a second pool, or call "
                f"{what.split('(', maxsplit=1)[0]}.reset_all() first in tests"
            )


class NamedSingleton:
    """Base of the per-name, per-process facades. Subclasses implement
    :meth:`_setup_pools` (and ``_after_fork_in_child``); each gets its own registry."""

    _instances: ClassVar[dict[str, Any]]
    _registry_lock: ClassVar[threading.Lock]

    name: str
    config: PoolConfig
    _replica_configs: tuple[PoolConfig, ...]
    max_replica_lag: float | None
    replica_fallback: str
    replica_read_only: bool

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._instances = {}
        cls._registry_lock = threading.Lock()
        _classes.add(cls)

    def __new__(cls: type[_S], name: str = "default", dsn: Any = None, **options: Any) -> _S:
        instance: _S | None = cls._instances.get(name)
        if instance is None:
            with cls._registry_lock:
                instance = cls._instances.get(name)
                if instance is None:
                    instance = super().__new__(cls)
                    instance._setup(name, dsn, options)
                    cls._instances[name] = instance
                    return instance
        if dsn is not None or options:
            instance._check_same(name, dsn, options)
        return instance

    def __init__(self, name: str = "default", dsn: Any = None, **options: Any) -> None:
        """Settings are taken by ``__new__``; a repeated call changes nothing."""

    def _setup(self, name: str, dsn: Any, options: dict[str, Any]) -> None:
        replicas: Sequence[Any] = options.pop("replicas", None) or ()
        self.max_replica_lag = options.pop("max_replica_lag", None)
        self.replica_fallback = options.pop("replica_fallback", "primary")
        self.replica_read_only = options.pop("replica_read_only", False)
        check_replica_settings(self.max_replica_lag, self.replica_fallback, self.replica_read_only)
        self.name = name
        self.config = PoolConfig.build(dsn, name=name, **options)
        self._replica_configs = tuple(
            # One connection kept open (unless the primary keeps none), so that a
            # replica that is down shows in health() without waiting for a read.
            self.config.replace(
                dsn=replica,
                name=f"{name}-replica{i}",
                min_size=min(1, self.config.min_size),
                read_only=self.config.read_only or self.replica_read_only,
            )
            for i, replica in enumerate(replicas)
        )
        if self.config.dsn == "":
            # Nothing named a server, so libpq's defaults pick one: say which, once.
            _log.info(
                "%s(%r): no dsn=, %s or DATABASE_URL; connecting with libpq's defaults: %s",
                type(self).__name__,
                name,
                env_url_name(name),
                default_target(self.config),
            )
        self._setup_pools()
        forking.register(self)

    def _setup_pools(self) -> None:
        raise NotImplementedError

    def _make_replica_pools(self, make: Callable[[PoolConfig], _P]) -> list[_P]:
        """One pool per replica, each marked as such: a read-only error (SQLSTATE 25006)
        from a replica is expected there, not a sign that a primary was demoted."""
        pools = [make(cfg) for cfg in self._replica_configs]
        for pool in pools:
            pool.meant_for_primary = False
        return pools

    def _new_router(self) -> ReplicaRouter:
        """Fresh routing state for a new set of replica pools."""
        return ReplicaRouter(
            [cfg.name for cfg in self._replica_configs],
            self.max_replica_lag,
            self.replica_fallback,
        )

    def _after_fork_in_child(self) -> None:
        raise NotImplementedError

    def _check_same(self, name: str, dsn: Any, options: dict[str, Any]) -> None:
        what = f"{type(self).__name__}({name!r})"
        replicas = options.pop("replicas", None)
        for key, default in (
            ("max_replica_lag", None),
            ("replica_fallback", "primary"),
            ("replica_read_only", False),
        ):
            if key in options and options[key] != getattr(self, key):
                raise ConfigurationError(
                    f"{key}: {what} already exists with {key}={getattr(self, key)!r}, and "
                    f"this call asks for {key}={options[key]!r}; pass the same settings "
                    "everywhere (or none)"
                )
            options.pop(key, default)
        requested = PoolConfig.build(dsn, name=name, **options)
        check_same_settings(self.config, requested, what)
        if replicas is not None and tuple(replicas) != self._replica_dsns():
            raise ConfigurationError(
                f"replicas: {what} already exists with other replicas; "
                "pass the same list everywhere"
            )

    def _replica_dsns(self) -> tuple[Any, ...]:
        return tuple(cfg.dsn for cfg in self._replica_configs)

    def _live(self: _S) -> _S:
        """The object the registry holds for this name now, for a kept reference about
        to open pools: itself, registered again if ``reset_all()`` forgot it and no
        other object took the name since; else the one that did. So one name has one
        set of pools, and ``reset_all()`` (and the shutdown hook) can close them."""
        cls = type(self)
        with cls._registry_lock:
            current: _S | None = cls._instances.get(self.name)
            if current is None:
                cls._instances[self.name] = self
                return self
            return current

    @classmethod
    def _forget_all(cls: type[_S]) -> list[_S]:
        """Empty the registry; return what was in it (for ``reset_all``)."""
        with cls._registry_lock:
            instances = list(cls._instances.values())
            cls._instances.clear()
        return instances

    def __repr__(self) -> str:
        dsn = self.config.redacted_dsn()
        return f"<poolkeeper.{type(self).__name__} {self.name!r} dsn={dsn!r}>"


def _remake_locks_after_fork() -> None:
    # Another thread of the parent may have held a registry lock at fork time (the
    # first AsyncDatabase() imports the driver under it); that thread is gone here.
    for cls in list(_classes):
        cls._registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_remake_locks_after_fork)
