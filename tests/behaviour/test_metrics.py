"""The Prometheus collector reports a real pool's numbers at scrape time, for both
pool classes (it reads ``stats()``, which neither driver touches)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import AnyPool, fetchval

prometheus_client = pytest.importorskip("prometheus_client", reason="[prometheus] not installed")

pytestmark = pytest.mark.per_model("the collector reads stats(); no driver call")


def collector_registry(pool: AnyPool) -> Any:
    """A registry with a ``PoolCollector`` for ``pool`` (the real pool under a
    ``BlockingPool``)."""
    from poolkeeper.metrics.prometheus import PoolCollector

    registry = prometheus_client.CollectorRegistry()
    registry.register(PoolCollector(getattr(pool, "pool", pool)))
    return registry


async def test_scrape_shows_the_pools_gauges_and_counters(make_pool: MakePool) -> None:
    pool = make_pool(min_size=2, max_size=3)
    await pool.wait(5)
    registry = collector_registry(pool)
    labels = {"pool": pool.name}
    async with pool.connection():
        in_use = registry.get_sample_value("poolkeeper_in_use", labels)
    assert in_use == 1.0
    assert registry.get_sample_value("poolkeeper_size", labels) == 2.0
    assert registry.get_sample_value("poolkeeper_borrows_total", labels) == 1.0
    text = prometheus_client.generate_latest(registry).decode()
    assert f'poolkeeper_connections_opened_total{{pool="{pool.name}"}} 2.0' in text


async def test_scrape_shows_the_times_and_the_trouble_counters(make_pool: MakePool) -> None:
    """Usage, wait and connect seconds, bad returns, refusals and cancellations are
    counters too (``_total``), so a dashboard takes their rate."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.wait(5)
    async with pool.connection() as conn:
        await fetchval(conn, "SELECT pg_sleep(0.05)")
    registry = collector_registry(pool)
    labels = {"pool": pool.name}
    usage = registry.get_sample_value("poolkeeper_usage_seconds_total", labels)
    assert usage is not None and usage >= 0.05
    connect = registry.get_sample_value("poolkeeper_connect_seconds_total", labels)
    assert connect is not None and connect > 0
    for name in ("wait_seconds", "returned_bad", "refused", "cancelled"):
        assert registry.get_sample_value(f"poolkeeper_{name}_total", labels) == 0.0
