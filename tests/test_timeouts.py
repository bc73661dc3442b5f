"""Every duration has bounds, and the deadline thread survives anything.

The bounds reaching the server, and per-call timeouts validated like a setting, are
behaviours of both pools: tests/behaviour/test_timeouts.py."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolkeeper import ConfigurationError, PoolConfig, PoolTimeout
from poolkeeper.config import (
    CALL_TIMEOUT,
    DURATION_BOUNDS,
    MAX_SECONDS,
    DurationBounds,
    check_call_timeout,
)
from tests.conftest import PoolFactory

BAD_DURATIONS = [
    1e20,
    10**400,
    math.nan,
    math.inf,
    -1.0,
    0.0,
    -0.0,
    "0.5",
    True,
    MAX_SECONDS * 1.01,
]


@pytest.mark.parametrize("setting", sorted(DURATION_BOUNDS))
@pytest.mark.parametrize("value", BAD_DURATIONS, ids=lambda v: repr(v)[:20])
def test_every_duration_setting_rejects_what_it_cannot_honour(setting: str, value: Any) -> None:
    options: dict[str, Any] = {setting: value}
    with pytest.raises(ConfigurationError, match=rf"^{setting}: "):
        PoolConfig(**options)


def _written_negative(value: float) -> bool:
    """``value < 0``, and -0.0 too: a sign is what the user wrote."""
    return value < 0 or (isinstance(value, float) and math.copysign(1.0, value) < 0)


def _acceptable(value: float, bounds: DurationBounds) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    above = value >= bounds.low if bounds.low_inclusive else value > bounds.low
    return above and value <= bounds.high and not _written_negative(value)


@settings(max_examples=400, deadline=None)
@given(
    setting=st.sampled_from(sorted(DURATION_BOUNDS)),
    value=st.sampled_from([-0.0, 0.0, -1e-300, 5e-324, MAX_SECONDS, -MAX_SECONDS])
    | st.floats()
    | st.integers(min_value=-(2**70), max_value=2**70),
)
def test_a_duration_is_taken_only_when_not_negative_and_within_its_bounds(
    setting: str, value: float
) -> None:
    """Settings and per-call timeouts: any float (-0.0, subnormals, nan, infinities)
    or int is either taken as the same number of seconds or refused naming what."""
    for what, bounds, check in (
        (setting, DURATION_BOUNDS[setting], lambda v: getattr(PoolConfig(**{setting: v}), setting)),
        ("timeout", CALL_TIMEOUT, check_call_timeout),
    ):
        if _acceptable(value, bounds):
            taken = check(value)
            assert taken == value and not _written_negative(taken)
        else:
            with pytest.raises(ConfigurationError, match=rf"^{what}: "):
                check(value)


@pytest.mark.parametrize(
    "setting", ["statement_timeout", "idle_in_transaction_timeout", "tcp_user_timeout"]
)
def test_a_millisecond_setting_that_would_round_to_off_is_refused(setting: str) -> None:
    too_short: dict[str, Any] = {setting: 0.0004}
    with pytest.raises(ConfigurationError, match=rf"^{setting}: "):
        PoolConfig(**too_short)
    PoolConfig(**{**too_short, setting: 0.001})


def test_keepalive_interval_stays_within_what_tcp_accepts() -> None:
    with pytest.raises(ConfigurationError, match=r"^keepalive_interval: "):
        PoolConfig(keepalive_interval=40000)


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "off"], ids=repr)
def test_pgbouncer_takes_only_a_real_boolean(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^pgbouncer: "):
        PoolConfig(pgbouncer=value)  # type: ignore[arg-type]


@pytest.mark.one_model(
    "threads", "Pool's deadline thread; AsyncPool keeps its deadlines on one loop timer"
)
def test_the_deadline_thread_survives_a_deadline_it_cannot_sleep_until(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    # A waiter whose deadline no lock can sleep until (the settings refuse it now;
    # this reaches past them to prove the thread itself copes).
    pool._timeout = 1e20
    far_waiter_got: list[Any] = []
    far = threading.Thread(target=lambda: far_waiter_got.append(pool.getconn()), daemon=True)
    far.start()
    time.sleep(0.2)
    pool._timeout = 10.0
    start = time.monotonic()
    for _ in range(2):
        with pytest.raises(PoolTimeout):
            pool.getconn(0.3)
    assert time.monotonic() - start < 3.0
    assert pool._deadline_thread is not None
    assert pool._deadline_thread.is_alive()
    pool.putconn(held)
    far.join(5)
    assert far_waiter_got
    pool.putconn(far_waiter_got[0])
