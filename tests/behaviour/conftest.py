"""The behaviour suite's fixtures: ``kind`` (which pool, which driver) and ``make_pool``.

Every test here is parametrized over the pool kinds by ``pytest_generate_tests``
below; ``tests/pool_kinds.py`` stops the run if one is not (see docs/testing.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.behaviour.kinds import ALL_KINDS, PER_MODEL_KINDS, AnyPool, Kind

MakePool = Callable[..., AnyPool]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kind" in metafunc.fixturenames and not any(
        "kind" in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize")
    ):
        per_model = metafunc.definition.get_closest_marker("per_model") is not None
        kinds = PER_MODEL_KINDS if per_model else ALL_KINDS
        # A documented difference (differs()) is left out, not run as a skip: a kind the
        # behaviour cannot exist for is not a test that did not run.
        differs = metafunc.definition.get_closest_marker("differs")
        if differs is not None:
            named = differs.args[0]
            left_out = {named} if isinstance(named, str) else set(named)
            kinds = [k for k in kinds if k.id not in left_out]
        # Indirect: through the kind fixture (which also honours differs() for a test
        # that parametrizes kind itself).
        metafunc.parametrize("kind", kinds, indirect=True)


@pytest.fixture
def kind(request: pytest.FixtureRequest) -> Kind:
    """The pool kind this run of the test is for; a documented difference skips it."""
    this: Kind = request.param
    differs = request.node.get_closest_marker("differs")
    if differs is not None:
        kinds = differs.args[0]
        if this.id in ([kinds] if isinstance(kinds, str) else kinds):
            reason = differs.kwargs.get("reason") or differs.args[1]
            pytest.skip(f"{this.id} differs, as documented: {reason}")
    return this


def pool_name(request: pytest.FixtureRequest) -> str:
    """A pool (and application_name) unique to this test and kind."""
    kind = request.node.callspec.params["kind"]
    raw = f"pk-{request.node.originalname[5:45]}-{kind.id}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)[:63]


@pytest.fixture
async def make_pool(
    kind: Kind, dsn: str, request: pytest.FixtureRequest
) -> AsyncIterator[MakePool]:
    """Build pools of this kind on the test server; every one is closed after the test.

    Takes ``AsyncPool``'s arguments; ``name`` defaults to one unique to the test
    (it is also the backends' ``application_name``), ``timeout`` to 10 s.
    """
    pools: list[AnyPool] = []

    def factory(*args: Any, **kwargs: Any) -> AnyPool:
        kwargs.setdefault("name", pool_name(request))
        kwargs.setdefault("timeout", 10.0)
        pool = kind.pool(args[0] if args else dsn, **kwargs)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close(timeout=1.0)
