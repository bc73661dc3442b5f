"""A small loopback TCP proxy for fault tests: pass, cut, black-hole, heal.

Sits between a pool and a real server. Each accepted client gets an upstream
connection and two pump threads. Modes:

* ``pass``: bytes flow both ways.
* ``cut()``: every current connection is reset at once (RST, as a crashed
  middlebox or a killed NAT entry looks to both ends); new ones still pass.
* ``blackhole()``: new connections are accepted but never answered, and current
  ones stop delivering bytes in either direction. The kernel still ACKs what
  the client sends, as a hung server or a stuck middlebox does, so only
  application-level timeouts can notice.
* ``heal()``: back to ``pass``; held bytes flow again, new connections reach
  the server.

Everything is bounded: sockets are closed on :meth:`close`, threads are daemons
and wake at least every 50 ms to notice a mode change or shutdown.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from types import TracebackType

__all__ = ["FaultProxy"]

_TICK = 0.05


class _Link:
    """One proxied client connection and its upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()

    def reset(self) -> None:
        """Close both ends with RST (SO_LINGER 0) so peers see a hard reset."""
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``, with faults on demand."""

    def __init__(self, target_port: int, *, port: int = 0) -> None:
        """``port``: listen there (a port a test kept refusing until now); 0: any free one."""
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.settimeout(_TICK)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._acceptor.start()

    # -- control --------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """A DSN that reaches the test server through this proxy (user postgres, trust)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def cut(self) -> None:
        """Reset every current connection; later connections pass."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.reset()

    def blackhole(self) -> None:
        """Stop delivering bytes on every connection, and answer no new one."""
        self._flowing.clear()

    def heal(self) -> None:
        """Let bytes flow again."""
        self._flowing.set()

    @property
    def connections(self) -> int:
        """Client connections currently proxied."""
        with self._lock:
            return sum(1 for link in self._links if not link.closed.is_set())

    def close(self) -> None:
        """Stop accepting, reset every connection and wait for the threads."""
        self._stopping.set()
        self._flowing.set()
        self.cut()
        self._acceptor.join(2)
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            link = _Link(client, None)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._serve, args=(link,), daemon=True).start()

    def _serve(self, link: _Link) -> None:
        # A black hole accepts and then says nothing: wait here until healed or reset,
        # without connecting upstream, so the client's connect_timeout is what ends it.
        while not self._flowing.wait(_TICK):
            if link.closed.is_set() or self._stopping.is_set():
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            link.reset()
            return
        link.upstream = upstream
        if link.closed.is_set():
            link.reset()
            return
        threading.Thread(target=self._pump, args=(link, upstream, link.client), daemon=True).start()
        self._pump(link, link.client, upstream)

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not link.closed.is_set():
                if not self._flowing.is_set():
                    # Held, not dropped: what was sent arrives after heal(), as after
                    # a healed partition once TCP retransmits.
                    self._flowing.wait(_TICK)
                    continue
                readable, _, _ = select.select([source], [], [], _TICK)
                if not readable:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                while not self._flowing.wait(_TICK):
                    if link.closed.is_set():
                        return
                sink.sendall(data)
        except (OSError, ValueError):
            pass
        link.reset()
