"""Prometheus metrics for poolkeeper pools (extra ``[prometheus]``).

A custom collector reads each pool's ``stats()`` when Prometheus scrapes, so
the borrow path pays nothing for metrics::

    from prometheus_client import REGISTRY
    from poolkeeper.metrics.prometheus import PoolCollector

    REGISTRY.register(PoolCollector(db.pool))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from poolkeeper.errors import ConfigurationError

    raise ConfigurationError(
        "metrics: Prometheus export needs the 'prometheus' extra: "
        "pip install 'poolkeeper[prometheus]'"
    ) from exc

from poolkeeper.stats import PoolStats

__all__ = ["PoolCollector"]


class _HasStats(Protocol):
    def stats(self) -> PoolStats: ...


_GAUGES: dict[str, tuple[str, Callable[[PoolStats], float]]] = {
    "size": ("Connections open or being opened", lambda s: s.size),
    "idle": ("Idle connections", lambda s: s.idle),
    "in_use": ("Connections lent out", lambda s: s.in_use),
    "waiting": ("Callers waiting for a connection", lambda s: s.waiting),
    "max_size": ("Configured max_size", lambda s: s.max_size),
    "min_size": ("Configured min_size", lambda s: s.min_size),
    "wait_p99_seconds": ("p99 of recent borrow waits", lambda s: s.wait_p99_ms / 1000),
    "breaker_open": ("1 while failing fast because the server is down", lambda s: s.breaker_open),
}
_COUNTERS: dict[str, tuple[str, Callable[[PoolStats], float]]] = {
    "borrows": ("Connections lent", lambda s: s.borrows),
    "waits": ("Borrows that had to wait", lambda s: s.waits),
    "timeouts": ("Borrows that timed out", lambda s: s.timeouts),
    "connections_opened": ("Connections opened", lambda s: s.connections_opened),
    "connections_closed": ("Connections closed", lambda s: s.connections_closed),
    "connect_errors": ("Failed connection attempts", lambda s: s.connect_errors),
    "checks_failed": ("Connections found dead by a check", lambda s: s.checks_failed),
    "rollbacks": ("Connections returned inside a transaction", lambda s: s.rollbacks),
    "resets": ("Session resets on return", lambda s: s.resets),
    "leaks": ("Connections held past leak_threshold", lambda s: s.leaks),
    "returned_bad": ("Connections returned broken or closed", lambda s: s.returned_bad),
    "refused": ("Borrows refused at once by max_waiting", lambda s: s.refused),
    "cancelled": ("Waits ended by cancellation or interruption", lambda s: s.cancelled),
    "wait_seconds": ("Time borrowers spent waiting", lambda s: s.wait_time_ms / 1000),
    "usage_seconds": ("Time connections spent lent", lambda s: s.usage_time_ms / 1000),
    "connect_seconds": ("Time spent opening connections", lambda s: s.connect_time_ms / 1000),
}


class PoolCollector(Collector):
    """Collects ``poolkeeper_*`` metrics, labelled by pool name, from the given pools."""

    def __init__(self, *pools: _HasStats) -> None:
        self._pools: Iterable[_HasStats] = pools

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Called by prometheus_client at scrape time."""
        snapshots = [pool.stats() for pool in self._pools]
        for name, (doc, read) in _GAUGES.items():
            gauge = GaugeMetricFamily(f"poolkeeper_{name}", doc, labels=["pool"])
            for snap in snapshots:
                gauge.add_metric([snap.name], float(read(snap)))
            yield gauge
        for name, (doc, read) in _COUNTERS.items():
            counter = CounterMetricFamily(f"poolkeeper_{name}", doc, labels=["pool"])
            for snap in snapshots:
                counter.add_metric([snap.name], float(read(snap)))
            yield counter
