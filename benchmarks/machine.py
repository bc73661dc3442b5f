"""What the numbers were measured on: host, Python, server and library versions."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "poolkeeper",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "psycopg2-binary",
    "SQLAlchemy",
    "asyncpg",
)


def _proc_field(path: str, key: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return "unknown"


def _memory() -> str:
    raw = _proc_field("/proc/meminfo", "MemTotal")
    try:
        kib = int(raw.split()[0])
    except (ValueError, IndexError):
        return raw
    return f"{kib / 1024 / 1024:.1f} GiB"


def server_info(dsn: str) -> dict[str, str]:
    """Server version, ``max_connections`` and address (never the password)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('max_connections')"
        ).fetchone()
        assert row is not None
        return {
            "server_version": str(row[0]),
            "max_connections": str(row[1]),
            "server": f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}",
        }


def poolkeeper_source_digest() -> str:
    """A short hash of poolkeeper's ``.py`` files: which build of the code was measured,
    even when it is not committed yet."""
    spec = importlib.util.find_spec("poolkeeper")
    if spec is None or not spec.submodule_search_locations:
        return "not found"
    root = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info(dsn: str) -> dict[str, str]:
    """A flat description of host and software, for the report header and the JSON."""
    info = {
        "cpus": str(os.cpu_count()),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "memory": _memory(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    info.update(server_info(dsn))
    info["poolkeeper_source_sha256"] = poolkeeper_source_digest()
    for package in PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info
