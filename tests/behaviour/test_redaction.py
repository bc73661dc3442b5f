"""No password in any error message, log line, repr or stats, on every pool kind.

Redaction itself (the registry of known secrets, the shapes a password takes) is
tested without a pool in tests/test_redaction.py and tests/test_secrets.py."""

from __future__ import annotations

import pytest

from poolkeeper import ConnectionFailed, PoolTimeout
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import Kind, close, fetchval

SECRET = "pk-Pa55word-Never-Shown"


def with_password(dsn: str, password: str) -> str:
    """``dsn`` (a URL) with ``password`` in its user info."""
    scheme, rest = dsn.split("://", 1)
    userinfo, hostpart = rest.split("@", 1)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{password}@{hostpart}"


async def test_password_never_appears_in_logs_repr_or_stats(
    dsn: str, make_pool: MakePool, kind: Kind, pk_logs: pytest.LogCaptureFixture
) -> None:
    # The test server trusts loopback, so any password is accepted: the pool really
    # connects with it and runs through its whole life at DEBUG.
    pool = make_pool(with_password(dsn, SECRET), min_size=2, max_size=2, leak_threshold=0.05)
    await pool.wait(5)
    conn = await pool.getconn()
    await close(conn)
    await pool.putconn(conn)
    async with pool.connection() as c:
        await kind.sleep(0.1)
        await fetchval(c, "SELECT 1")
    await pool.drain()
    texts = [repr(pool), repr(pool.config), repr(pool.stats()), str(pool.health())]
    db = kind.database(f"redacted-{kind.id}", dsn=with_password(dsn, SECRET))
    texts.append(repr(getattr(db, "db", db)))
    await pool.close()
    texts += [record.getMessage() for record in pk_logs.records]
    assert pk_logs.records, "expected DEBUG log lines to inspect"
    assert not [t for t in texts if SECRET in t]


async def test_connect_failures_are_redacted_in_errors_causes_and_logs(
    make_pool: MakePool, pk_logs: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(
        f"postgresql://app:{SECRET}@127.0.0.1:1/db", min_size=1, timeout=0.5, connect_timeout=1
    )
    with pytest.raises((PoolTimeout, ConnectionFailed)) as info:
        await pool.getconn()
    error = info.value
    cause = error.__cause__
    assert isinstance(cause, ConnectionFailed)
    chain = [str(error), repr(error), str(cause), repr(cause), repr(pool), str(pool.stats())]
    assert "app:***@127.0.0.1:1" in str(cause)
    chain += [record.getMessage() for record in pk_logs.records]
    assert not [t for t in chain if SECRET in t]
