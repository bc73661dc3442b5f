"""A return racing ``close()``: forced at the exact windows (after putconn's
generation check; just before it pushes the connection onto the idle stack), then
checked on the server."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import psycopg
import pytest

from poolkeeper import Pool, PoolClosed
from poolkeeper.pool_core import PoolCore
from poolkeeper.record import ConnectionRecord
from tests.conftest import backends, settled_backends

_check_after_slot = PoolCore.__dict__["_check_after"]
_idle_slot = PoolCore.__dict__["_idle"]


class RacyPool(Pool):
    """A Pool that runs ``close()`` to completion, in another thread, the first time
    the armed attribute is read by putconn: ``_check_after`` just past the generation
    check, ``_idle`` just before the push."""

    armed = ""

    def _close_now(self, what: str) -> None:
        if self.armed == what:
            self.armed = ""
            closer = threading.Thread(target=self.close, kwargs={"timeout": 2})
            closer.start()
            closer.join()

    @property
    def _check_after(self) -> float:
        self._close_now("_check_after")
        value: float = _check_after_slot.__get__(self)
        return value

    @_check_after.setter
    def _check_after(self, value: float) -> None:
        _check_after_slot.__set__(self, value)

    @property
    def _idle(self) -> deque[ConnectionRecord]:
        self._close_now("_idle")
        value: deque[ConnectionRecord] = _idle_slot.__get__(self)
        return value

    @_idle.setter
    def _idle(self, value: deque[ConnectionRecord]) -> None:
        _idle_slot.__set__(self, value)


@pytest.mark.one_model(
    "threads", "close() from another thread, forced into windows of Pool.putconn's own code"
)
@pytest.mark.parametrize("window", ["_check_after", "_idle"])
def test_a_return_racing_close_is_closed_not_kept(
    dsn: str, admin: psycopg.Connection[Any], window: str
) -> None:
    name = f"pk-close-race{window}"
    pool = RacyPool(dsn, name=name, min_size=0, max_size=1)
    try:
        conn = pool.getconn(timeout=5)
        assert len(backends(admin, name)) == 1
        pool.armed = window
        pool.putconn(conn)
        assert pool.closed
        assert not pool.armed
        # The closed pool neither lends it nor keeps its session open on the server.
        with pytest.raises(PoolClosed):
            pool.getconn(timeout=0)
        assert settled_backends(admin, name, []) == []
        assert pool.stats().size == 0
    finally:
        pool.close(timeout=1)
