"""The Prometheus collector reports a real pool's numbers at scrape time."""

from __future__ import annotations

import pytest

from tests.conftest import PoolFactory

prometheus_client = pytest.importorskip("prometheus_client", reason="[prometheus] not installed")


def test_scrape_shows_the_pools_gauges_and_counters(make_pool: PoolFactory) -> None:
    from poolkeeper.metrics.prometheus import PoolCollector

    pool = make_pool(min_size=2, max_size=3, name="pk-prom")
    pool.wait(5)
    registry = prometheus_client.CollectorRegistry()
    registry.register(PoolCollector(pool))
    with pool.connection():
        in_use = registry.get_sample_value("poolkeeper_in_use", {"pool": "pk-prom"})
    assert in_use == 1.0
    assert registry.get_sample_value("poolkeeper_size", {"pool": "pk-prom"}) == 2.0
    assert registry.get_sample_value("poolkeeper_borrows_total", {"pool": "pk-prom"}) == 1.0
    text = prometheus_client.generate_latest(registry).decode()
    assert 'poolkeeper_connections_opened_total{pool="pk-prom"} 2.0' in text


def test_scrape_shows_the_times_and_the_trouble_counters(make_pool: PoolFactory) -> None:
    """Usage, wait and connect seconds, bad returns, refusals and cancellations are
    counters too (``_total``), so a dashboard takes their rate."""
    from poolkeeper.metrics.prometheus import PoolCollector

    pool = make_pool(min_size=1, max_size=1, name="pk-prom-times")
    pool.wait(5)
    with pool.connection() as conn:
        conn.execute("SELECT pg_sleep(0.05)")
    registry = prometheus_client.CollectorRegistry()
    registry.register(PoolCollector(pool))
    labels = {"pool": "pk-prom-times"}
    usage = registry.get_sample_value("poolkeeper_usage_seconds_total", labels)
    assert usage is not None and usage >= 0.05
    connect = registry.get_sample_value("poolkeeper_connect_seconds_total", labels)
    assert connect is not None and connect > 0
    for name in ("wait_seconds", "returned_bad", "refused", "cancelled"):
        assert registry.get_sample_value(f"poolkeeper_{name}_total", labels) == 0.0
