"""``PoolConfig``: validated, immutable pool settings.

Settings come, highest first, from keyword arguments, the ``dsn=`` argument and
the environment (``POOLKEEPER_<NAME>_URL``, ``DATABASE_URL``, then libpq's own
``PG*`` variables, which libpq reads itself when the conninfo leaves them out).
Every check happens here, at construction, so a bad value fails before any
connection is attempted, with ``ConfigurationError`` naming the setting.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import unquote

from poolkeeper.conninfo import parse_conninfo
from poolkeeper.drivers.base import ConnectSpec
from poolkeeper.errors import ConfigurationError
from poolkeeper.redact import mask_mapping, redact, secrets

__all__ = [
    "DURATION_BOUNDS",
    "MAX_SECONDS",
    "ConnectKwargs",
    "Dsn",
    "DurationBounds",
    "PoolConfig",
    "check_call_timeout",
    "check_duration",
    "env_url_name",
    "parse_dsn",
]

Dsn = str | Callable[[], str]
ConnectKwargs = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
CheckSetting = Literal["auto"] | Callable[[Any], object] | None
ResetSetting = Literal["auto", "always"] | Callable[[Any], object] | None

KNOWN_DRIVERS = ("psycopg", "psycopg2", "asyncpg")
_ENV_SIZES = {
    "min_size": "POOLKEEPER_MIN_SIZE",
    "max_size": "POOLKEEPER_MAX_SIZE",
    "timeout": "POOLKEEPER_TIMEOUT",
}
_NAME_OK = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")

# The validation rules of the plain settings, one row each (_validate applies them).
#: Whole-number settings and their minimum.
_WHOLE_NUMBERS = {"min_size": 0, "max_size": 1, "max_waiting": 0, "num_workers": 1}
#: Settings with a fixed set of values: the values, whether a callable is allowed too,
#: and how the error message lists them.
_CHOICES: dict[str, tuple[tuple[object, ...], bool, str]] = {
    "check": (("auto", None), True, "'auto', None or a callable(conn)"),
    "reset": (("auto", "always", None), True, "'auto', 'always', None or a callable(conn)"),
}


def env_url_name(pool_name: str) -> str:
    """The environment variable that holds a named pool's URL: ``POOLKEEPER_<NAME>_URL``."""
    return "POOLKEEPER_" + re.sub(r"[^A-Za-z0-9]", "_", pool_name).upper() + "_URL"


_DSN_FORMS = (
    "expected a postgresql://user:password@host:port/dbname URL (a '%', '@', '/', '?', "
    "'#' or space in the password percent-encoded: urllib.parse.quote(password, safe='')) "
    "or a 'host=... dbname=...' string; the DSN is not shown, as it may hold a password"
)


def parse_dsn(dsn: str) -> dict[str, Any]:
    """libpq's reading of ``dsn``, its secrets registered for redaction.

    Raises ``ConfigurationError`` for a DSN libpq cannot parse, or a URL that libpq
    would read otherwise than written (an unencoded '@' or '/' in the password
    turns part of it into the host, port or database name, which every connect
    error would then quote). The message never quotes the DSN nor libpq's words
    about it, and carries no chained exception that would.
    """
    if not dsn:
        return {}
    _register_url_password(dsn)
    problem = ""
    try:
        params = parse_conninfo(dsn)
    except Exception as exc:
        # Only libpq's words before the first quote: what follows quotes the DSN.
        problem = str(exc).split('"', 1)[0].strip().rstrip(":") or type(exc).__name__
    if problem:
        # Raised outside the except block, so that no __context__ holds libpq's error.
        raise ConfigurationError(f"dsn: cannot be parsed (libpq: {problem}...); {_DSN_FORMS}")
    secrets.add_from(params)
    if _url_misread(dsn, params):
        raise ConfigurationError(f"dsn: the URL does not parse as written; {_DSN_FORMS}")
    return params


def _url_userinfo_password(dsn: str) -> str | None:
    """The password of a URL's userinfo, read up to the last '@' (what the user meant)."""
    _scheme, sep, rest = dsn.strip().partition("://")
    if not sep or "@" not in rest:
        return None
    token = rest.split(None, 1)[0] if rest.strip() else ""
    userinfo = token[: token.rfind("@")]
    if ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1]


def _register_url_password(dsn: str) -> None:
    raw = _url_userinfo_password(dsn)
    if raw is not None:
        secrets.add(raw)
        secrets.add(unquote(raw))


def _url_misread(dsn: str, params: Mapping[str, Any]) -> bool:
    raw = _url_userinfo_password(dsn)
    if raw is None or unquote(raw) == params.get("password"):
        return False
    # libpq splits at the first '@' and ends the authority at the first '/': either
    # leaves an '@' in what it took for the host, port or database name.
    return any("@" in str(params.get(key) or "") for key in ("host", "port", "dbname", "user"))


#: Longest duration any setting or call may ask for: 2^31 - 1 milliseconds (24.8
#: days), what the server's millisecond settings, poll() and libpq hold; longer
#: values overflowed a timer (the deadline thread died) or failed every connect.
MAX_SECONDS = (2**31 - 1) / 1000
#: Linux's limit for TCP_KEEPIDLE, which keepalive_interval sets.
MAX_KEEPALIVE_SECONDS = 32767.0
#: Settings sent to the server (or libpq) in whole milliseconds: below 1 ms they
#: would round to 0, which the server reads as "disabled".
MIN_MS_SECONDS = 0.001


@dataclasses.dataclass(frozen=True)
class DurationBounds:
    """What a duration setting accepts: ``low < value <= high`` (``low_inclusive``: ``<=``),
    and ``None`` when ``optional`` (the setting turned off)."""

    optional: bool
    high: float = MAX_SECONDS
    low: float = 0.0
    low_inclusive: bool = False


_OFF = DurationBounds(optional=True)
_MS_OFF = DurationBounds(optional=True, low=MIN_MS_SECONDS, low_inclusive=True)

#: Every duration setting (seconds) and its bounds; docs/configuration.md lists them.
DURATION_BOUNDS: dict[str, DurationBounds] = {
    "timeout": DurationBounds(optional=False),
    "connect_timeout": DurationBounds(optional=False),
    "reconnect_timeout": DurationBounds(optional=False),
    "check_after": DurationBounds(optional=False),
    "max_lifetime": _OFF,
    "max_idle": _OFF,
    "leak_threshold": _OFF,
    "fail_fast_after": _OFF,
    "keepalive_interval": DurationBounds(optional=True, high=MAX_KEEPALIVE_SECONDS),
    "tcp_user_timeout": _MS_OFF,
    "statement_timeout": _MS_OFF,
    "idle_in_transaction_timeout": _MS_OFF,
}

#: A timeout passed to one call (getconn, wait, close...): 0 means "do not wait".
CALL_TIMEOUT = DurationBounds(optional=False, low_inclusive=True)


def check_duration(value: object, what: str, bounds: DurationBounds) -> float | None:
    """``value`` if it is a number of seconds within ``bounds``, else ``ConfigurationError``
    naming ``what`` (a setting, or a call's ``timeout``)."""
    if value is None and bounds.optional:
        return None
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    # An int compares with the float bounds exactly; math.isfinite() would overflow
    # converting a huge one to float.
    if number is not None and (isinstance(number, int) or math.isfinite(number)):
        above_low = number >= bounds.low if bounds.low_inclusive else number > bounds.low
        # -0.0 >= 0.0 holds, yet it is written as a negative number: refused like -1.
        negative = isinstance(number, float) and math.copysign(1.0, number) < 0
        if above_low and not negative and number <= bounds.high:
            return float(number)
    low = f">= {bounds.low:g}" if bounds.low_inclusive else f"> {bounds.low:g}"
    off = ", or None to turn it off" if bounds.optional else ""
    raise ConfigurationError(
        f"{what}: {value!r} must be a number of seconds {low} and <= {bounds.high:g}{off}"
    )


def check_call_timeout(timeout: object) -> float:
    """A per-call ``timeout=`` argument, validated like a setting."""
    checked = check_duration(timeout, "timeout", CALL_TIMEOUT)
    assert checked is not None
    return checked


@dataclasses.dataclass(frozen=True, repr=False)
class PoolConfig:
    """Validated, immutable settings of one pool; see docs/configuration.md for each field.

    Build it with :meth:`PoolConfig.build` (which applies the environment) or pass the
    same keywords to ``Pool``/``Database``. ``repr`` never shows a password.
    """

    dsn: Dsn = ""
    name: str = "poolkeeper"
    driver: str = "psycopg"
    min_size: int = 1
    max_size: int = 10
    timeout: float = 30.0
    max_waiting: int = 0
    max_lifetime: float | None = 3600.0
    max_idle: float | None = 600.0
    check: CheckSetting = "auto"
    check_after: float = 0.25
    reset: ResetSetting = "auto"
    connect_timeout: float = 10.0
    reconnect_timeout: float = 300.0
    reconnect_failed: Callable[[Any], object] | None = None
    connection_class: type[Any] | None = None
    close_returns: bool = False
    leak_threshold: float | None = None
    configure: Callable[[Any], object] | None = None
    connect_kwargs: ConnectKwargs | None = None
    keepalive_interval: float | None = 30.0
    tcp_user_timeout: float | None = 30.0
    statement_timeout: float | None = None
    idle_in_transaction_timeout: float | None = None
    fail_fast_after: float | None = 0.5
    pgbouncer: bool = False
    read_only: bool = False
    num_workers: int = 2
    # Names of the settings the caller gave explicitly (kwargs, dsn, env), for Database's
    # "a later call with different settings is an error" rule.
    explicit: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self._validate()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        dsn: Dsn | None = None,
        *,
        name: str | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> PoolConfig:
        """Merge keyword ``options`` > ``dsn`` > environment into a validated config."""
        env = os.environ if environ is None else environ
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)} - {"explicit"}
        if unknown:
            bad = sorted(unknown)[0]
            raise ConfigurationError(
                f"unknown setting {bad!r}; the settings are listed in docs/configuration.md"
            )
        explicit = set(options)
        pool_name = name if name is not None else "poolkeeper"
        if name is not None:
            explicit.add("name")
        if dsn is not None:
            explicit.add("dsn")
            chosen_dsn: Dsn = dsn
        else:
            chosen_dsn = cls._dsn_from_env(pool_name, env)
        for field_name, var in _ENV_SIZES.items():
            if field_name not in options and env.get(var, "").strip():
                options[field_name] = cls._number_from_env(field_name, var, env[var])
        return cls(dsn=chosen_dsn, name=pool_name, explicit=frozenset(explicit), **options)

    @staticmethod
    def _dsn_from_env(pool_name: str, env: Mapping[str, str]) -> str:
        for var in (env_url_name(pool_name), "DATABASE_URL"):
            value = env.get(var, "").strip()
            if value:
                return value
        # Empty conninfo: libpq fills host, port, user, password… from PG* itself.
        return ""

    @staticmethod
    def _number_from_env(field_name: str, var: str, raw: str) -> float | int:
        try:
            return int(raw) if field_name.endswith("size") else float(raw)
        except ValueError:
            raise ConfigurationError(
                f"{field_name}: environment variable {var}={raw!r} is not a number"
            ) from None

    def replace(self, **changes: Any) -> PoolConfig:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    # -- derived values -----------------------------------------------------------------

    def resolve_conninfo(self) -> tuple[str, dict[str, Any]]:
        """Call the DSN and kwargs callables (if any) and return ``(conninfo, kwargs)``.

        Called at every connect, so rotating passwords and IAM tokens take effect
        without rebuilding the pool. Any password found is registered for redaction.
        """
        conninfo = self.dsn() if callable(self.dsn) else self.dsn
        raw_kwargs = self.connect_kwargs() if callable(self.connect_kwargs) else self.connect_kwargs
        kwargs = dict(raw_kwargs or {})
        secrets.add_from(kwargs)
        params = parse_dsn(conninfo)
        # The pool's name only where nothing else names the application: libpq takes
        # application_name from the conninfo, then PGAPPNAME, then this fallback.
        if "fallback_application_name" not in params:
            kwargs.setdefault("fallback_application_name", self.name)
        return conninfo, kwargs

    def connect_spec(self) -> ConnectSpec:
        """Resolve the DSN/kwargs (calling callables) into what a driver needs to connect."""
        conninfo, kwargs = self.resolve_conninfo()
        return ConnectSpec(
            conninfo=conninfo,
            kwargs=kwargs,
            connect_timeout=self.connect_timeout,
            tcp_user_timeout=self.tcp_user_timeout,
            keepalive_idle=self.keepalive_interval,
            statement_timeout=self.statement_timeout,
            idle_in_transaction_timeout=self.idle_in_transaction_timeout,
            pgbouncer=self.pgbouncer,
            connection_class=self.connection_class,
            close_returns=self.close_returns,
            read_only=self.read_only,
        )

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            if field.name == "explicit":
                continue
            value = getattr(self, field.name)
            if field.name == "dsn":
                value = self.redacted_dsn()
            elif field.name == "connect_kwargs" and isinstance(value, Mapping):
                value = mask_mapping(value)
            shown.append(f"{field.name}={value!r}")
        return f"PoolConfig({', '.join(shown)})"

    def redacted_dsn(self) -> str:
        """The DSN with its password masked (a callable DSN is shown as such, not called)."""
        if callable(self.dsn):
            return f"<callable {getattr(self.dsn, '__qualname__', 'dsn')}>"
        return redact(self.dsn)

    # -- validation ---------------------------------------------------------------------

    def _validate(self) -> None:
        self._check_name_and_driver()
        for field_name, minimum in _WHOLE_NUMBERS.items():
            self._check_int(field_name, minimum=minimum)
        if self.min_size > self.max_size:
            raise ConfigurationError(
                f"min_size: {self.min_size} is larger than max_size {self.max_size}; "
                "raise max_size or lower min_size"
            )
        for field_name, bounds in DURATION_BOUNDS.items():
            check_duration(getattr(self, field_name), field_name, bounds)
        for flag in ("pgbouncer", "read_only"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigurationError(
                    f"{flag}: {getattr(self, flag)!r} must be True or False (a string such "
                    "as 'false' would be read as on)"
                )
        for field_name, (allowed, callable_ok, expected) in _CHOICES.items():
            value = getattr(self, field_name)
            if not (value in allowed or (callable_ok and callable(value))):
                raise ConfigurationError(f"{field_name}: {value!r} is not {expected}")
        self._check_connect_settings()

    def _check_name_and_driver(self) -> None:
        if not isinstance(self.name, str) or not _NAME_OK.match(self.name):
            raise ConfigurationError(
                f"name: {self.name!r} must be 1-63 letters, digits, '_', '-' or '.'"
            )
        if self.driver not in KNOWN_DRIVERS:
            raise ConfigurationError(
                f"driver: unknown driver {self.driver!r}; choose one of {', '.join(KNOWN_DRIVERS)}"
            )

    def _check_connect_settings(self) -> None:
        if self.configure is not None and not callable(self.configure):
            raise ConfigurationError("configure: must be a callable taking the new connection")
        self._check_psycopg_only()
        if self.reconnect_failed is not None and not callable(self.reconnect_failed):
            raise ConfigurationError("reconnect_failed: must be a callable taking the pool")
        if self.connect_kwargs is not None and not (
            callable(self.connect_kwargs) or isinstance(self.connect_kwargs, Mapping)
        ):
            raise ConfigurationError(
                "connect_kwargs: must be a mapping or a callable returning one"
            )
        if isinstance(self.connect_kwargs, Mapping):
            secrets.add_from(self.connect_kwargs)
        if isinstance(self.dsn, str):
            parse_dsn(self.dsn)
        elif not callable(self.dsn):
            raise ConfigurationError("dsn: must be a string or a callable returning one")

    def _check_psycopg_only(self) -> None:
        """``connection_class`` and ``close_returns`` act on psycopg 3's classes (the
        pool checks the class against the one its driver opens)."""
        if not isinstance(self.close_returns, bool):
            raise ConfigurationError(f"close_returns: {self.close_returns!r} is not True or False")
        for field_name in ("connection_class", "close_returns"):
            if getattr(self, field_name) and self.driver != "psycopg":
                raise ConfigurationError(
                    f"{field_name}: supported with driver='psycopg' (psycopg 3) only, "
                    f"not {self.driver!r}; remove it or switch drivers"
                )
        if self.connection_class is not None and not isinstance(self.connection_class, type):
            raise ConfigurationError(
                f"connection_class: {self.connection_class!r} is not a class; pass a "
                "subclass of psycopg.Connection (Pool) or psycopg.AsyncConnection (AsyncPool)"
            )

    def _check_int(self, field_name: str, *, minimum: int) -> None:
        value = getattr(self, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(f"{field_name}: {value!r} must be a whole number >= {minimum}")
