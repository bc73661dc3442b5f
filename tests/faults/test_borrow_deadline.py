"""A borrow's timeout bounds the checks it triggers: on a network that accepts but never
answers, ``getconn(timeout=0.5)`` gives up at 0.5 s, whatever ``connect_timeout`` is
and however many idle connections are due a check; psycopg2's own waits (ping,
ROLLBACK, DISCARD ALL) end too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from poolkeeper import PoolTimeout
from poolkeeper.embedded import LocalServer
from tests.behaviour.kinds import ALL_KINDS, AnyPool, Kind
from tests.faults.conftest import Report
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.fault

BORROW_TIMEOUT = 0.5
CONNECT_TIMEOUT = 2.0


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_borrow_on_a_silent_network_ends_at_its_timeout(
    shared_server: LocalServer,
    proxy_to: Callable[[int], FaultProxy],
    kind_pools: Callable[..., AnyPool],
    report: Report,
    kind: Kind,
) -> None:
    proxy = proxy_to(shared_server.port)
    pool = kind_pools(
        proxy.dsn,
        name=f"fault-deadline-{kind.id}",
        min_size=4,
        max_size=4,
        check_after=0.05,
        connect_timeout=CONNECT_TIMEOUT,
        fail_fast_after=None,
    )
    try:
        await pool.wait(10)
        await asyncio.sleep(0.1)  # every idle connection is now due a check before it is lent
        proxy.blackhole()
        start = time.monotonic()
        # In a task or thread of its own, so that a hang fails the test instead of hanging it.
        borrow = kind.spawn(pool.getconn(BORROW_TIMEOUT))
        with pytest.raises(PoolTimeout):
            await asyncio.wait_for(borrow, 4 * CONNECT_TIMEOUT + 2)
        took = time.monotonic() - start
        report["borrow_took_s"] = took
        assert took < BORROW_TIMEOUT + 0.5 < CONNECT_TIMEOUT
    finally:
        proxy.heal()
