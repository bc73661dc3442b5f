"""OpenTelemetry metrics for poolkeeper pools (extra ``[otel]``).

The connection-pool instruments of OpenTelemetry's database semantic conventions,
labelled ``db.client.connection.pool.name``, read from the pools when the SDK collects:
a borrow pays nothing for them, a return one append (its ``use_time``)::

    from poolkeeper.metrics.opentelemetry import PoolMetrics

    PoolMetrics(pool)  # or PoolMetrics(db.pool, other_pool, meter_provider=provider)

What each instrument measures, and what it costs, is in docs/observability.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from poolkeeper.errors import ConfigurationError

    raise ConfigurationError(
        "metrics: OpenTelemetry export needs the 'otel' extra: pip install 'poolkeeper[otel]'"
    ) from exc

from poolkeeper import __version__
from poolkeeper.stats import ConnectTimes, PoolStats, UseTimes

__all__ = ["POOL_NAME", "STATE", "PoolMetrics"]

#: The attribute naming the pool on every instrument (the pool's ``name``).
POOL_NAME = "db.client.connection.pool.name"
#: The attribute of ``db.client.connection.count``: ``idle`` or ``used``.
STATE = "db.client.connection.state"

# Seconds; the SDK's default buckets are meant for milliseconds.
_SECONDS_BUCKETS: Sequence[float] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class _Instrumentable(Protocol):
    """What a pool (``Pool`` or ``AsyncPool``) offers the exporter."""

    name: str
    _connect_times: ConnectTimes

    def stats(self) -> PoolStats: ...

    def _waits_since(self, cursor: int) -> tuple[int, list[float]]: ...

    def _use_times_sampler(self) -> UseTimes: ...


class PoolMetrics:
    """Registers the semantic conventions' connection-pool instruments for ``pools``.

    Gauges and counters are observable instruments over each pool's ``stats()``. The
    ``create_time`` and ``wait_time`` histograms take the connects and waits the pools
    already sample, once each, when the SDK collects; ``use_time`` takes the returns
    each pool samples from the moment a ``PoolMetrics`` is made for it. Keep the object
    alive as long as the metrics should be exported (the meter holds the callbacks, not
    the pools).
    """

    def __init__(
        self, *pools: _Instrumentable, meter_provider: MeterProvider | None = None
    ) -> None:
        self._pools: tuple[_Instrumentable, ...] = pools
        self._wait_cursors: dict[int, int] = {id(pool): 0 for pool in pools}
        # Asked for here, not per collection: a pool records use times only once asked.
        self._use_times: dict[int, UseTimes] = {
            id(pool): pool._use_times_sampler() for pool in pools
        }
        self._drain_lock = threading.Lock()
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(
            "poolkeeper", __version__
        )
        # Registered first so its callback, which feeds the histograms, runs before the
        # SDK reads them in the same collection.
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._observe_count],
            unit="{connection}",
            description="Connections in the state given by db.client.connection.state.",
        )
        self._create_time: Histogram = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._wait_time: Histogram = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time a borrow that had to wait took to obtain a connection.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._use_time: Histogram = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        gauges: dict[str, tuple[str, str, Callable[[PoolStats], int]]] = {
            "db.client.connection.idle.max": (
                "{connection}",
                "The most idle connections the pool keeps (max_size).",
                lambda s: s.max_size,
            ),
            "db.client.connection.idle.min": (
                "{connection}",
                "The fewest connections the pool keeps open (min_size).",
                lambda s: s.min_size,
            ),
            "db.client.connection.max": (
                "{connection}",
                "The most connections the pool opens (max_size).",
                lambda s: s.max_size,
            ),
            "db.client.connection.pending_requests": (
                "{request}",
                "Borrowers waiting for a connection.",
                lambda s: s.waiting,
            ),
        }
        for name, (unit, description, read) in gauges.items():
            meter.create_observable_up_down_counter(
                name, [self._observer(read)], unit=unit, description=description
            )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            [self._observer(lambda s: s.timeouts)],
            unit="{timeout}",
            description="Borrows that gave up waiting for a connection.",
        )

    def _observer(
        self, read: Callable[[PoolStats], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(read(stats), {POOL_NAME: stats.name}) for stats in self._stats()]

        return observe

    def _stats(self) -> list[PoolStats]:
        return [pool.stats() for pool in self._pools]

    def _observe_count(self, options: CallbackOptions) -> Iterable[Observation]:
        self._drain()
        observations = []
        for stats in self._stats():
            observations.append(Observation(stats.idle, {POOL_NAME: stats.name, STATE: "idle"}))
            observations.append(Observation(stats.in_use, {POOL_NAME: stats.name, STATE: "used"}))
        return observations

    def _drain(self) -> None:
        """Move the connects, waits and uses recorded since the last collection into
        the histograms (each once, even with several readers collecting)."""
        with self._drain_lock:
            for pool in self._pools:
                attributes = {POOL_NAME: pool.name}
                for seconds in pool._connect_times.drain():
                    self._create_time.record(seconds, attributes)
                cursor, waits = pool._waits_since(self._wait_cursors[id(pool)])
                self._wait_cursors[id(pool)] = cursor
                for seconds in waits:
                    self._wait_time.record(seconds, attributes)
                for seconds in self._use_times[id(pool)].drain():
                    self._use_time.record(seconds, attributes)
