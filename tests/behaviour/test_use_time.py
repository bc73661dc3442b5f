"""OpenTelemetry's ``db.client.connection.use_time`` on both pool classes: each
return's time since its borrow, exact, from a clock the test moves."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

import poolkeeper.async_pool
import poolkeeper.pool
from poolkeeper.metrics.opentelemetry import POOL_NAME, PoolMetrics
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import Kind, backend_pid, fetchval

pytestmark = pytest.mark.per_model("use time is the pool's own bookkeeping on return")

#: The scripted holds, in seconds, and the bucket (of PoolMetrics' boundaries) each
#: falls in: (0.0005, 0.001], (0.025, 0.05], (0.25, 0.5] and (2.5, 5].
HOLDS = (2**-10, 2**-5, 0.375, 3.0)
BUCKETS = (1, 6, 9, 12)


class Clock:
    """The monotonic clock of the borrow and return paths, moved by the test alone.

    It starts at a whole second, and the holds are binary fractions, so every use time
    comes out exact. At most a second ahead of the real clock and only moved forward:
    the pool's other bookkeeping (which reads the real one) sees nothing out of order
    that a slow host could not produce."""

    def __init__(self) -> None:
        self.now = float(math.floor(time.monotonic()) + 1)

    def __call__(self) -> float:
        return self.now


def use_time(reader: InMemoryMetricReader, pool: str) -> HistogramDataPoint | None:
    """The ``use_time`` point of ``pool`` in one collection (None: no returns yet)."""
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "db.client.connection.use_time":
                    continue
                for point in metric.data.data_points:
                    if (point.attributes or {}).get(POOL_NAME) == pool:
                        assert isinstance(point, HistogramDataPoint)
                        return point
    return None


def assert_holds(point: HistogramDataPoint | None) -> None:
    assert point is not None
    assert point.count == len(HOLDS)
    assert point.sum == sum(HOLDS)
    assert (point.min, point.max) == (min(HOLDS), max(HOLDS))
    expected = [0] * (len(point.explicit_bounds) + 1)
    for bucket in BUCKETS:
        expected[bucket] += 1
    assert list(point.bucket_counts) == expected


async def test_use_time_is_each_borrow_until_its_return(
    make_pool: MakePool,
    kind: Kind,
    admin: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = make_pool(min_size=2, max_size=2)
    await pool.wait(10)
    # A return before any PoolMetrics is made for the pool records no use time.
    await pool.putconn(await pool.getconn())
    reader = InMemoryMetricReader()
    real: Any = getattr(pool, "pool", pool)  # the Pool under a BlockingPool
    metrics = PoolMetrics(real, meter_provider=MeterProvider(metric_readers=[reader]))
    assert use_time(reader, pool.name) is None

    clock = Clock()
    monkeypatch.setattr(
        poolkeeper.async_pool if kind.is_async else poolkeeper.pool, "_monotonic", clock
    )
    first = await pool.getconn()
    clock.now += HOLDS[0]
    await pool.putconn(first)
    # Two held at once, returned in the other order.
    first, second = await pool.getconn(), await pool.getconn()
    pids = {backend_pid(first), backend_pid(second)}
    assert len(pids) == 2
    clock.now += HOLDS[1]
    await pool.putconn(second)
    clock.now += HOLDS[2] - HOLDS[1]
    await pool.putconn(first)
    first = await pool.getconn()
    assert await fetchval(first, "SELECT pg_backend_pid()") in pids
    clock.now += HOLDS[3]
    await pool.putconn(first)
    monkeypatch.undo()

    # Collected on another thread, as an exporter's does.
    assert_holds(await asyncio.to_thread(use_time, reader, pool.name))
    # Cumulative: the next collection counts none of them again.
    assert_holds(use_time(reader, pool.name))
    # The holds were on the pool's two server sessions, and only those.
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        (pool.name,),
    ).fetchall()
    assert {pid for (pid,) in rows} == pids
    del metrics
