"""``pgbouncer=True`` through a real PgBouncer in transaction mode (skipped without one)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import PoolFactory

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="pgbouncer is not installed (Debian package 'pgbouncer')"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def bouncer_dsn(dsn: str) -> Iterator[str]:
    """A PgBouncer of our own, transaction mode, two server connections."""
    assert PGBOUNCER is not None
    target = conninfo_to_dict(dsn)
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="pk-pgb-"))
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={target.get('host', '127.0.0.1')} port={target.get('port', 5432)} "
        f"user={target.get('user', 'postgres')}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = any\npool_mode = transaction\n"
        "default_pool_size = 2\nmax_client_conn = 100\n"
        f"logfile = {workdir}/pgbouncer.log\npidfile = {workdir}/pgbouncer.pid\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    # PgBouncer refuses to run as root.
    user = None
    if os.geteuid() == 0:
        user = "postgres" if _has_user("postgres") else "nobody"
        os.chown(workdir, pwd.getpwnam(user).pw_uid, -1)
    proc = subprocess.Popen(
        [PGBOUNCER, str(workdir / "pgbouncer.ini")],
        user=user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log = (workdir / "pgbouncer.log").read_text(errors="replace")
                    pytest.fail(f"pgbouncer did not start:\n{log}")
                time.sleep(0.05)
        dbname = target.get("dbname", "postgres")
        yield f"postgresql://{target.get('user', 'postgres')}@127.0.0.1:{port}/{dbname}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.one_model(
    "threads",
    "psycopg's automatic prepare through PgBouncer from many threads; asyncpg's statement "
    "cache under pgbouncer=True is in test_async_pool.py",
)
def test_transaction_mode_with_many_clients_and_repeated_statements(
    make_pool: PoolFactory, bouncer_dsn: str
) -> None:
    """Repeated statements would be server-prepared by psycopg after 5 runs; through a
    transaction-mode PgBouncer the next transaction may land on another server
    connection. ``pgbouncer=True`` turns that off, so nothing fails."""
    pool = make_pool(bouncer_dsn, min_size=4, max_size=4, pgbouncer=True)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(40):
                with pool.transaction() as conn:
                    row: Any = conn.execute("SELECT %s::int + %s::int", [n, i]).fetchone()
                    assert row == (n + i,)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert pool.stats().borrows == 240
