"""No password in any error message, log line, repr or stats, on any path."""

from __future__ import annotations

import time

import pytest

from poolkeeper import ConnectionFailed, Database, Pool, PoolTimeout
from poolkeeper.redact import redact, secrets
from tests.conftest import PoolFactory

SECRET = "pk-Pa55word-Never-Shown"


def with_password(dsn: str, password: str) -> str:
    scheme, rest = dsn.split("://", 1)
    userinfo, hostpart = rest.split("@", 1)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{password}@{hostpart}"


def test_password_never_appears_in_logs_repr_or_stats(
    dsn: str, make_pool: PoolFactory, pk_logs: pytest.LogCaptureFixture
) -> None:
    # The test server trusts loopback, so any password is accepted: the pool really
    # connects with it and runs through its whole life at DEBUG.
    pool = make_pool(with_password(dsn, SECRET), min_size=2, max_size=2, leak_threshold=0.05)
    pool.wait(5)
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    with pool.connection() as c:
        time.sleep(0.1)
        c.execute("SELECT 1")
    pool.drain()
    texts = [repr(pool), repr(pool.config), repr(pool.stats()), str(pool.health())]
    db = Database("redacted", dsn=with_password(dsn, SECRET))
    texts.append(repr(db))
    pool.close()
    texts += [record.getMessage() for record in pk_logs.records]
    assert pk_logs.records, "expected DEBUG log lines to inspect"
    assert not [t for t in texts if SECRET in t]


def test_connect_failures_are_redacted_in_errors_causes_and_logs(
    pk_logs: pytest.LogCaptureFixture,
) -> None:
    pool = Pool(
        f"postgresql://app:{SECRET}@127.0.0.1:1/db", min_size=1, timeout=0.5, connect_timeout=1
    )
    try:
        with pytest.raises((PoolTimeout, ConnectionFailed)) as info:
            pool.getconn()
        error = info.value
        cause = error.__cause__
        assert isinstance(cause, ConnectionFailed)
        chain = [str(error), repr(error), str(cause), repr(cause), repr(pool), str(pool.stats())]
        assert "app:***@127.0.0.1:1" in str(cause)
        chain += [record.getMessage() for record in pk_logs.records]
        assert not [t for t in chain if SECRET in t]
    finally:
        pool.close(0.5)


def test_a_known_password_is_masked_wherever_it_appears() -> None:
    # Some messages quote a fragment of a conninfo with no "password=" before it (a
    # malformed one, say): only the registry of passwords seen can catch those.
    secrets.add("pk-Known-But-Shapeless")
    said = redact('missing "=" after "pk-Known-But-Shapeless" in connection info string')
    assert "pk-Known-But-Shapeless" not in said


def test_a_password_never_seen_is_masked_by_its_shape() -> None:
    # A DSN too malformed to parse never registered its password: its shape must do.
    for text in (
        "host=db password=pk-Never-Registered-1 port=x",
        "postgresql://app:pk-Never-Registered-2@db/app?sslmode=x",
    ):
        assert "pk-Never-Registered" not in redact(text), text
