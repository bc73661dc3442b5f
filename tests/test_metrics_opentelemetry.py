"""poolkeeper.metrics.opentelemetry: the semantic conventions' pool instruments, read by
the SDK's in-memory reader through a scripted borrow / wait / timeout scenario."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from poolkeeper import AsyncPool, PoolTimeout
from poolkeeper.metrics.opentelemetry import POOL_NAME, STATE, PoolMetrics
from tests.conftest import PoolFactory

Reading = dict[tuple[str, str | None], Any]


def _read(reader: InMemoryMetricReader, pool: str) -> Reading:
    """Every data point of ``pool``: (instrument, state) -> value, or the histogram point."""
    found: Reading = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    if attrs.get(POOL_NAME) != pool:
                        continue
                    state = attrs.get(STATE)
                    key = (metric.name, None if state is None else str(state))
                    assert isinstance(point, (HistogramDataPoint, NumberDataPoint))
                    found[key] = point if isinstance(point, HistogramDataPoint) else point.value
    return found


def _gauges(reading: Reading) -> dict[str, int]:
    prefix = "db.client.connection."
    return {
        name[len(prefix) :] + (f"[{state}]" if state else ""): value
        for (name, state), value in reading.items()
        if not isinstance(value, HistogramDataPoint)
    }


def _histogram_count(reading: Reading, name: str) -> int:
    point = reading.get((f"db.client.connection.{name}", None))
    return 0 if point is None else int(point.count)


def _backends(admin: psycopg.Connection[Any], name: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        (name,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _expected(idle: int, used: int, pending: int, timeouts: int) -> dict[str, int]:
    return {
        "count[idle]": idle,
        "count[used]": used,
        "idle.max": 2,
        "idle.min": 2,
        "max": 2,
        "pending_requests": pending,
        "timeouts": timeouts,
    }


@pytest.mark.one_model(
    "threads",
    twin="tests/test_metrics_opentelemetry.py::test_async_pool_scenario",
)
def test_sync_pool_scenario(make_pool: PoolFactory, admin: psycopg.Connection[Any]) -> None:
    reader = InMemoryMetricReader()
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(timeout=10)
    metrics = PoolMetrics(pool, meter_provider=MeterProvider(metric_readers=[reader]))

    reading = _read(reader, pool.name)
    assert _gauges(reading) == _expected(idle=2, used=0, pending=0, timeouts=0)
    assert _histogram_count(reading, "create_time") == 2
    assert _histogram_count(reading, "wait_time") == 0
    assert _backends(admin, pool.name) == 2

    first, second = pool.getconn(), pool.getconn()
    assert _gauges(_read(reader, pool.name)) == _expected(idle=0, used=2, pending=0, timeouts=0)

    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.2)
    reading = _read(reader, pool.name)
    assert _gauges(reading) == _expected(idle=0, used=2, pending=0, timeouts=1)
    # A borrow that timed out obtained nothing: it is a timeout, not a wait time.
    assert _histogram_count(reading, "wait_time") == 0

    served: list[Any] = []
    waiter = threading.Thread(target=lambda: served.append(pool.getconn(timeout=10)))
    waiter.start()
    while pool.stats().waiting != 1:
        threading.Event().wait(0.005)
    assert _gauges(_read(reader, pool.name))["pending_requests"] == 1
    pool.putconn(first)
    waiter.join(timeout=10)
    reading = _read(reader, pool.name)
    assert _gauges(reading) == _expected(idle=0, used=2, pending=0, timeouts=1)
    wait_time = reading[("db.client.connection.wait_time", None)]
    assert wait_time.count == 1
    assert 0 < wait_time.sum < 10
    # Cumulative: the wait is not counted again at the next collection.
    assert _histogram_count(_read(reader, pool.name), "wait_time") == 1

    pool.putconn(second)
    pool.putconn(served[0])
    reading = _read(reader, pool.name)
    assert _gauges(reading) == _expected(idle=2, used=0, pending=0, timeouts=1)
    assert _histogram_count(reading, "create_time") == 2
    assert _backends(admin, pool.name) == 2
    del metrics


@pytest.mark.one_model(
    "asyncio",
    twin="tests/test_metrics_opentelemetry.py::test_sync_pool_scenario",
)
async def test_async_pool_scenario(dsn: str, admin: psycopg.Connection[Any]) -> None:
    reader = InMemoryMetricReader()
    async with AsyncPool(dsn, name="pk-otel-async", min_size=2, max_size=2) as pool:
        await pool.wait(timeout=10)
        metrics = PoolMetrics(pool, meter_provider=MeterProvider(metric_readers=[reader]))
        reading = _read(reader, pool.name)
        assert _gauges(reading) == _expected(idle=2, used=0, pending=0, timeouts=0)
        assert _histogram_count(reading, "create_time") == 2

        first, second = await pool.getconn(), await pool.getconn()
        with pytest.raises(PoolTimeout):
            await pool.getconn(timeout=0.2)
        assert _gauges(_read(reader, pool.name)) == _expected(idle=0, used=2, pending=0, timeouts=1)

        waiter = asyncio.ensure_future(pool.getconn(timeout=10))
        while pool.stats().waiting != 1:
            await asyncio.sleep(0.005)
        # The exporter's thread collects while the loop runs.
        reading = await asyncio.to_thread(_read, reader, pool.name)
        assert _gauges(reading)["pending_requests"] == 1
        await pool.putconn(first)
        third = await waiter
        reading = _read(reader, pool.name)
        assert _gauges(reading) == _expected(idle=0, used=2, pending=0, timeouts=1)
        assert _histogram_count(reading, "wait_time") == 1

        await pool.putconn(second)
        await pool.putconn(third)
        reading = _read(reader, pool.name)
        assert _gauges(reading) == _expected(idle=2, used=0, pending=0, timeouts=1)
        assert _histogram_count(reading, "wait_time") == 1
        assert _backends(admin, pool.name) == 2
        del metrics
