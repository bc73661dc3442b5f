"""The README's snippets run as a newcomer would run them: each Python block as its own
program, with only ``DATABASE_URL`` set, against a database of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    # Blocks inside a list item are indented with it.
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return [textwrap.dedent(block) for block in blocks]


def _block(marker: str) -> str:
    (block,) = [b for b in _python_blocks() if marker in b]
    return block


@pytest.fixture
def fresh_database(dsn: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """The DSN of an empty database, dropped afterwards: the snippets create tables."""
    name = f"pk_readme_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _run(code: str, database_url: str, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POOLKEEPER_"))}
    env["DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_python_block_is_one_of_the_programs_tested_here() -> None:
    assert len(_python_blocks()) == 8


def test_quick_start_runs_as_written(fresh_database: str) -> None:
    output = _run(_block("db.release_connection"), fresh_database)
    assert "'signup'" in output
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT kind FROM events").fetchall() == [("signup",)]


def test_asyncio_snippet_runs_as_written(fresh_database: str) -> None:
    output = _run(_block("asyncio.run(main())"), fresh_database)
    assert "datetime" in output


def test_fastapi_snippet_serves_a_request(fresh_database: str, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(_block("FastAPI(lifespan="))
    client = (
        "from fastapi.testclient import TestClient\n"
        "import app\n"
        "with TestClient(app.app) as client:\n"
        "    response = client.get('/now')\n"
        "    assert response.status_code == 200, response.text\n"
        "    print(response.json()['now'])\n"
    )
    assert _run(client, fresh_database, cwd=tmp_path).strip()


def test_django_snippet_is_a_configuration_the_backend_accepts() -> None:
    pytest.importorskip("django", reason="Django is in the [django] and [test] extras")
    from poolkeeper.integrations.django.base import pool_settings

    namespace: dict[str, Any] = {}
    exec(_block('"ENGINE": "poolkeeper.integrations.django"'), namespace)
    default = namespace["DATABASES"]["default"]
    assert default["ENGINE"] == "poolkeeper.integrations.django"
    assert pool_settings("default", default) == {"max_size": 10, "timeout": 5}


def test_sqlalchemy_snippet_runs_as_written(fresh_database: str) -> None:
    out = _run(_block("integrations.sqlalchemy"), fresh_database)
    assert out.strip() == "1"


def test_psycopg_pool_snippet_runs_as_written(fresh_database: str) -> None:
    out = _run(_block("compat.psycopg_pool"), fresh_database)
    assert out.strip() == "(1,)"


def test_opentelemetry_snippet_exports_the_pool_instruments(fresh_database: str) -> None:
    # As an application would run it: a global MeterProvider set first (here, with the
    # SDK's in-memory reader), then the README's lines; then one collection.
    provider = (
        "from opentelemetry import metrics as otel\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "reader = InMemoryMetricReader()\n"
        "otel.set_meter_provider(MeterProvider(metric_readers=[reader]))\n"
    )
    collect = (
        "\nwith poolkeeper.Database().connection() as conn:\n"
        "    conn.execute('SELECT 1')\n"
        "data = reader.get_metrics_data()\n"
        "for name in sorted({m.name for r in data.resource_metrics\n"
        "                    for s in r.scope_metrics for m in s.metrics}):\n"
        "    print(name)\n"
    )
    out = _run(provider + _block("PoolMetrics(") + collect, fresh_database)
    names = set(out.split())
    assert {
        "db.client.connection.count",
        "db.client.connection.create_time",
        "db.client.connection.use_time",
        "db.client.connection.max",
    } <= names


def test_prometheus_snippet_registers_the_collector(fresh_database: str) -> None:
    scrape = (
        "\nfrom prometheus_client import generate_latest\n"
        "print(generate_latest(REGISTRY).decode())\n"
    )
    out = _run(_block("PoolCollector(") + scrape, fresh_database)
    assert re.search(r'^poolkeeper_size\{pool="[^"]+"\} \d', out, re.M), out
