"""Fork safety: a child process must never touch its parent's connections.

After ``fork()`` the child shares the parent's sockets. If the child used one,
both processes would read each other's replies; if the child merely closed one
(or let the garbage collector do it), libpq would send the server a Terminate
message and end the *parent's* session. So in the child we point each
inherited socket's file descriptor at ``/dev/null``: the parent's socket is
untouched, and whatever the child's driver objects later write or close lands
nowhere. Then each pool forgets its connections and marks itself forked.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Protocol

__all__ = ["ForkAware", "neutralise_fd", "register"]


class ForkAware(Protocol):
    """Anything that must reset itself in a forked child."""

    def _after_fork_in_child(self) -> None: ...


_registry: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_registry_lock = threading.Lock()


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked from now on."""
    with _registry_lock:
        _registry.add(obj)


def neutralise_fd(fd: int) -> None:
    """Replace ``fd`` by ``/dev/null`` in this process only."""
    if fd < 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _after_fork_in_child() -> None:
    global _registry_lock
    # The parent may have held the lock at fork time; the child has one thread now.
    _registry_lock = threading.Lock()
    for obj in list(_registry):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
