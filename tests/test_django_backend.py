"""The Django backend in one process: settings checked, and what Django sets on a new
connection (role, isolation level, cursor class) kept as the pooled connection's
baseline across poolkeeper's reset. The served behaviour (gunicorn, transactions)
is in tests/process_models/test_django.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from poolkeeper import ConfigurationError

pytest.importorskip("django", reason="Django is in the [django] and [test] extras")

from django.conf import settings

if not settings.configured:
    settings.configure(USE_TZ=True, TIME_ZONE="UTC")
    import django

    django.setup()

from poolkeeper.integrations.django.base import DatabaseWrapper


def _settings_dict(dsn: str, **changes: Any) -> dict[str, Any]:
    params = conninfo_to_dict(dsn)
    base: dict[str, Any] = {
        "ENGINE": "poolkeeper.integrations.django",
        "NAME": params.get("dbname", "postgres"),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
        "OPTIONS": {},
        "ATOMIC_REQUESTS": False,
        "AUTOCOMMIT": True,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "TIME_ZONE": None,
        "TEST": {},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"CONN_MAX_AGE": 60}, "['CONN_MAX_AGE']"),
        ({"CONN_MAX_AGE": None}, "['CONN_MAX_AGE']"),
        ({"OPTIONS": {"pool": 10}}, "['OPTIONS']['pool']"),
        ({"OPTIONS": {"pool": {"maxsize": 10}}}, "['OPTIONS']['pool']['maxsize']"),
        ({"OPTIONS": {"pool": {"dsn": "host=x"}}}, "['OPTIONS']['pool']['dsn']"),
        ({"OPTIONS": {"pool": {"max_size": 0}}}, "max_size"),
    ],
)
def test_bad_settings_name_the_setting(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named.replace("[", r"\[").replace("]", r"\]")):
        wrapper = DatabaseWrapper(
            _settings_dict("dbname=x", **changes), alias=f"bad-{uuid.uuid4()}"
        )
        # Values poolkeeper checks itself are checked when the pool is made.
        wrapper.pool  # noqa: B018


@pytest.fixture
def role(admin: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"pk_django_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    admin.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(name)))
    yield name
    admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_django_session_settings_survive_the_reset_on_return(dsn: str, role: str) -> None:
    options = {
        "assume_role": role,
        "isolation_level": psycopg.IsolationLevel.SERIALIZABLE,
        "pool": {"min_size": 1, "max_size": 1},
    }
    wrapper = DatabaseWrapper(_settings_dict(dsn, OPTIONS=options), alias=f"t-{uuid.uuid4()}")
    try:
        seen = []
        for _ in range(3):
            with wrapper.cursor() as cur:
                cur.execute(
                    "SELECT pg_backend_pid(), current_user, "
                    "current_setting('transaction_isolation')"
                )
                seen.append(cur.fetchone())
                # A borrower undoing Django's settings: poolkeeper must reset the
                # session and put Django's baseline back, not lend it like this.
                cur.execute("RESET ROLE")
                cur.execute("SET search_path TO pg_catalog")
            wrapper.set_autocommit(False)
            with wrapper.cursor() as cur:
                cur.execute("SELECT current_setting('transaction_isolation')")
                (isolation,) = cur.fetchone()
            assert isolation == "serializable"
            wrapper.rollback()
            wrapper.close()
        backends = {row[0] for row in seen}
        assert len(backends) == 1, seen  # one connection, borrowed three times
        assert [row[1] for row in seen] == [role] * 3
    finally:
        wrapper.close_pool()
