"""PoolConfig: precedence, validation and redaction; no server needed."""

from __future__ import annotations

from typing import Any

import pytest

from poolkeeper import AsyncPool, ConfigurationError, Pool, PoolConfig, PoolError
from poolkeeper.config import env_url_name
from poolkeeper.redact import redact

SECRET = "hunter2-Sekr1t"


def test_keyword_beats_dsn_beats_environment() -> None:
    env = {
        "DATABASE_URL": "postgresql://env@envhost/envdb",
        "POOLKEEPER_MAX_SIZE": "7",
        "POOLKEEPER_MIN_SIZE": "2",
        "POOLKEEPER_TIMEOUT": "4.5",
    }
    from_env = PoolConfig.build(environ=env)
    assert from_env.dsn == "postgresql://env@envhost/envdb"
    assert (from_env.min_size, from_env.max_size, from_env.timeout) == (2, 7, 4.5)

    explicit = PoolConfig.build("postgresql://arg@arghost/argdb", environ=env, max_size=3)
    assert explicit.dsn == "postgresql://arg@arghost/argdb"
    assert explicit.max_size == 3
    assert explicit.min_size == 2  # still from the environment
    assert explicit.explicit == {"dsn", "max_size"}


def test_named_pool_reads_its_own_url_first() -> None:
    env = {"POOLKEEPER_REPORTS_URL": "postgresql://r@rhost/r", "DATABASE_URL": "postgresql://d@d/d"}
    assert env_url_name("reports") == "POOLKEEPER_REPORTS_URL"
    assert PoolConfig.build(name="reports", environ=env).dsn == "postgresql://r@rhost/r"
    assert PoolConfig.build(name="other", environ=env).dsn == "postgresql://d@d/d"


def test_no_url_leaves_libpq_to_read_pg_variables() -> None:
    assert PoolConfig.build(environ={"PGHOST": "somewhere"}).dsn == ""


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"min_size": -1}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"min_size": 5, "max_size": 2}, "min_size"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"max_waiting": -3}, "max_waiting"),
        ({"max_lifetime": -1.0}, "max_lifetime"),
        ({"driver": "mysql"}, "driver"),
        ({"check": "sometimes"}, "check"),
        ({"reset": "maybe"}, "reset"),
        ({"min_size": 1.5}, "min_size"),
        ({"max_size": True}, "max_size"),
        ({"configure": "not callable"}, "configure"),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"name": "has space"}, "name"),
    ],
)
@pytest.mark.parametrize("pool_class", [Pool, AsyncPool])
def test_bad_settings_fail_at_construction_naming_the_setting(
    options: dict[str, Any], setting: str, pool_class: type[Pool[Any]] | type[AsyncPool[Any]]
) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        pool_class("postgresql://u@localhost/db", open=False, **options)


def test_configuration_error_is_a_pool_error_and_a_value_error() -> None:
    with pytest.raises(PoolError):
        PoolConfig(min_size=-1)
    with pytest.raises(ValueError, match="min_size"):
        PoolConfig(min_size=-1)


def test_bad_environment_number_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="POOLKEEPER_MAX_SIZE"):
        PoolConfig.build(environ={"POOLKEEPER_MAX_SIZE": "ten"})


def test_unparseable_dsn_fails_without_echoing_the_password() -> None:
    with pytest.raises(ConfigurationError, match="dsn") as info:
        PoolConfig(dsn=f"password={SECRET} = garbage")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("pool_class", [Pool, AsyncPool])
def test_repr_masks_the_password_in_url_and_kwargs(
    pool_class: type[Pool[Any]] | type[AsyncPool[Any]],
) -> None:
    cfg = PoolConfig(
        dsn=f"postgresql://app:{SECRET}@db.example/app",
        connect_kwargs={"password": SECRET + "x"},
    )
    text = repr(cfg)
    assert SECRET not in text
    assert "app:***@db.example" in text
    pool = pool_class(config=cfg, open=False)
    assert SECRET not in repr(pool)


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://u:{SECRET}@h/db",
        f"host=h password={SECRET} dbname=x",
        f"host=h password='{SECRET}' dbname=x",
        f"postgresql://u@h/db?password={SECRET}&sslmode=require",
    ],
)
def test_redact_masks_credential_shapes_never_seen_before(text: str) -> None:
    assert SECRET not in redact(text)


def test_callable_dsn_is_not_called_at_construction() -> None:
    calls: list[int] = []

    def dsn() -> str:
        calls.append(1)
        return "postgresql://u@h/db"

    cfg = PoolConfig(dsn=dsn)
    assert calls == []
    assert "callable" in repr(cfg)
    conninfo, _ = cfg.resolve_conninfo()
    assert conninfo == "postgresql://u@h/db"
    assert calls == [1]


def test_application_name_defaults_to_the_pool_name_but_never_overrides() -> None:
    _, kwargs = PoolConfig(dsn="postgresql://u@h/db", name="orders").resolve_conninfo()
    assert kwargs["fallback_application_name"] == "orders"
    assert "application_name" not in kwargs
    _, kwargs = PoolConfig(dsn="postgresql://u@h/db?application_name=mine").resolve_conninfo()
    assert "application_name" not in kwargs
