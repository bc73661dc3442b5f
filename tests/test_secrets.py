"""Secrets never shown: malformed DSNs, every libpq secret keyword, chained errors,
tracebacks, the leak report, the CLI, and passwords of every shape (hypothesis)."""

from __future__ import annotations

import logging
import socket
import time
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from poolkeeper import ConfigurationError, Pool, PoolConfig
from poolkeeper.cli.app import app
from poolkeeper.redact import REGISTRY_CAP, redact, secrets
from tests.conftest import PoolFactory

pytestmark = pytest.mark.one_model(
    "threads",
    "what is masked is decided by poolkeeper.redact and PoolConfig, whichever pool carries "
    "the text; the pools' own surfaces run on every kind in "
    "tests/behaviour/test_redaction.py",
)

runner = CliRunner()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything reachable through ``__cause__``/``__context__``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def _texts_of(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    for link in _chain(exc):
        texts += [str(link), repr(link), *(str(a) for a in link.args)]
        texts.append(str(getattr(link, "detail", "")))
    return texts


def _leaks(texts: list[str], *secrets_: str) -> list[str]:
    return [t for t in texts for s in secrets_ if len(s) >= 3 and s in t]


def _cli_output(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code != 0
    return result.output + (str(result.exception) if result.exception else "")


# -- malformed DSNs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "fragments"),
    [
        ("Kiwi7731%zz", ["Kiwi7731"]),  # not percent-encoding: libpq quotes the token
        ("Mango@5521", ["Mango", "5521"]),  # libpq takes the first '@': host 5521@...
        ("Pear/9931x", ["Pear", "9931x"]),  # libpq ends the authority at '/': port 'Pear'
        ("Fig 4482 z", ["Fig 4482"]),  # an unencoded space
    ],
)
def test_a_malformed_url_never_shows_its_password(password: str, fragments: list[str]) -> None:
    dsn = f"postgresql://app:{password}@127.0.0.1:{_closed_port()}/db"
    with pytest.raises(ConfigurationError) as info:
        PoolConfig(dsn=dsn)
    texts = _texts_of(info.value)
    assert "dsn:" in str(info.value)
    assert not _leaks(texts, password, *fragments)
    for args in (["check", dsn], ["doctor", "--workers", "2", "--dsn", dsn]):
        out = _cli_output(*args, "--timeout", "1")
        assert "dsn" in out
        assert not _leaks([out], password, *fragments)


def test_a_callable_dsn_that_returns_a_malformed_url_is_redacted_too(
    pk_logs: pytest.LogCaptureFixture,
) -> None:
    dsn = f"postgresql://app:Grape%q1x@127.0.0.1:{_closed_port()}/db"
    with pytest.raises(ConfigurationError) as info:
        PoolConfig(dsn=lambda: dsn).resolve_conninfo()
    assert not _leaks(_texts_of(info.value), "Grape%q1x", "Grape")


def test_a_malformed_url_fails_with_psycopg2_without_quoting_the_fragment() -> None:
    left, right = "Plum", "8812x"
    dsn = f"postgresql://app:{left}/{right}@127.0.0.1:1/db"
    with pytest.raises(ConfigurationError) as info:
        Pool(dsn, driver="psycopg2", open=False)
    assert not _leaks(_texts_of(info.value), left, right)


# -- sslpassword and friends -------------------------------------------------------------

SSL_SECRET = "ssl-Pa55-Secret-q7"


@pytest.mark.parametrize(
    "how", ["kv", "url", "kwargs", "kwargs-callable"], ids=lambda h: f"sslpassword-{h}"
)
def test_sslpassword_is_masked_in_reprs_and_connect_logs(
    how: str, pk_logs: pytest.LogCaptureFixture
) -> None:
    port = _closed_port()
    base = f"host=127.0.0.1 port={port} user=app dbname=db"
    options: dict[str, Any] = {}
    if how == "kv":
        dsn = f"{base} sslpassword={SSL_SECRET}"
    elif how == "url":
        dsn = f"postgresql://app@127.0.0.1:{port}/db?sslpassword={SSL_SECRET}"
    else:
        dsn = base
        kwargs = {"sslpassword": SSL_SECRET, "sslmode": "prefer"}
        options["connect_kwargs"] = kwargs if how == "kwargs" else (lambda: kwargs)
    pool = Pool(dsn, min_size=1, timeout=0.5, connect_timeout=1, reconnect_timeout=1, **options)
    try:
        deadline = time.monotonic() + 5
        while not pool.stats().connect_errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.stats().connect_errors
        texts = [repr(pool), repr(pool.config), str(pool.stats()), str(pool.health())]
        texts += [r.getMessage() for r in pk_logs.records]
        assert any("could not connect" in t for t in texts)
        assert not _leaks(texts, SSL_SECRET)
    finally:
        pool.close(0.5)


def test_redact_masks_every_secret_keyword_in_every_form() -> None:
    secret = "Unseen-Zx81-secret"
    shapes = [
        f"password={secret} host=h",
        f"sslpassword='{secret}' host=h",
        f"host=h sslpassword = {secret}",
        f"postgresql://u@h/db?sslpassword={secret}&sslmode=require",
        f"postgresql://u@h/db?password={secret}",
        f"{{'sslpassword': '{secret}', 'host': 'h'}}",
        f'{{"password": "{secret}"}}',
        f"postgresql://u:{secret}@h/db",
        f"postgresql://u:{secret}@x@h/db",
        f"postgresql://u:{secret}/x@h/db",
        # libpq reads a backslash-escaped space as part of an unquoted value.
        f"host=h password=abc\\ {secret} port=1",
    ]
    for text in shapes:
        assert secret not in redact(text), text
    # Paths are not secrets: sslkey and passfile stay readable.
    assert redact("sslkey=/etc/k.pem passfile=/p") == "sslkey=/etc/k.pem passfile=/p"


# -- the leak report and the registry -----------------------------------------------------


def test_the_leak_report_masks_a_dsn_on_the_borrowers_line(
    make_pool: PoolFactory, pk_logs: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(min_size=1, max_size=1, leak_threshold=0.05)
    conn = pool.getconn()  # postgresql://app:Leaky-Kx55-pw@db.example/app sslpassword=Leaky-Kx56
    try:
        deadline = time.monotonic() + 5
        while not pool.stats().leaks and time.monotonic() < deadline:
            time.sleep(0.02)
        reports = [r.getMessage() for r in pk_logs.records if "borrowed here" in r.getMessage()]
        assert reports
        assert "pool.getconn()" in reports[0]
        assert not _leaks(reports, "Leaky-Kx55-pw", "Leaky-Kx56")
    finally:
        pool.putconn(conn)


def test_a_token_per_connect_keeps_the_registry_bounded(dsn: str, admin: object) -> None:
    minted: list[str] = []

    def fresh_token_dsn() -> str:
        minted.append(f"tok-{len(minted):06d}-Qz")
        # The test server trusts loopback: the token is sent, and accepted.
        return f"{dsn}{'&' if '?' in dsn else '?'}password={minted[-1]}"

    cfg = PoolConfig(dsn=fresh_token_dsn)
    for _ in range(REGISTRY_CAP * 20):
        cfg.resolve_conninfo()
    assert len(secrets.known()) <= REGISTRY_CAP
    assert minted[-1] not in redact(f"the token {minted[-1]} was refused")
    assert minted[0] not in secrets.known()
    # A real connection with the newest token: the registry's bound does not hurt use.
    pool = Pool(config=cfg.replace(min_size=1, max_size=1, name="pk-token"))
    with pool, pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- passwords of every shape -------------------------------------------------------------

_SPECIAL = "%@/:?#&= '\"\\é€😀"
_passwords = st.text(
    alphabet=st.sampled_from(_SPECIAL) | st.characters(codec="utf-8", exclude_categories=["C"]),
    min_size=1,
    max_size=12,
).map(lambda core: f"Pw9{core}Zq")


def _kv_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=_passwords, form=st.sampled_from(["url", "kv", "kwargs"]))
def test_no_surface_shows_a_password_of_any_shape(password: str, form: str) -> None:
    port = _closed_port()
    options: dict[str, Any] = {}
    if form == "url":
        dsn = f"postgresql://app:{quote(password, safe='')}@127.0.0.1:{port}/db"
    elif form == "kv":
        dsn = f"host=127.0.0.1 port={port} user=app password={_kv_quote(password)}"
    else:
        dsn = f"host=127.0.0.1 port={port} user=app"
        options["connect_kwargs"] = {"password": password, "sslpassword": password}
    with pytest.raises(ConfigurationError) as info:
        PoolConfig(dsn=dsn, min_size=3, max_size=2, **options)
    texts, log_lines = _what_a_failing_pool_shows(dsn, **options)
    texts += _texts_of(info.value) + log_lines
    assert any("could not connect" in t for t in log_lines)
    assert not _leaks(texts, password, quote(password, safe=""), _kv_quote(password))


@settings(max_examples=25, deadline=None)
@given(
    left=st.from_regex(r"[A-Z][a-z]{3}[0-9]{3}", fullmatch=True),
    sep=st.sampled_from(["@", "/", "%", " ", "?", "#", "%z", "@@", "/@"]),
    right=st.from_regex(r"[A-Z][a-z]{3}[0-9]{3}", fullmatch=True),
)
def test_an_unencoded_url_password_leaks_no_fragment(left: str, sep: str, right: str) -> None:
    password = f"{left}{sep}{right}"
    dsn = f"postgresql://app:{password}@127.0.0.1:{_closed_port()}/db"
    texts, log_lines = _what_a_failing_pool_shows(dsn)
    assert not _leaks(texts + log_lines, password, left, right)


def _what_a_failing_pool_shows(dsn: str, **options: Any) -> tuple[list[str], list[str]]:
    """What a pool that cannot connect to ``dsn`` shows: its reprs and stats once a
    connect failed (or the ``ConfigurationError`` its constructor raised), and, second,
    the lines it logged."""
    handler = _ListHandler()
    logging.getLogger("poolkeeper").addHandler(handler)
    texts: list[str] = []
    try:
        try:
            pool = Pool(
                dsn, min_size=1, timeout=0.3, connect_timeout=1, reconnect_timeout=1, **options
            )
        except ConfigurationError as exc:
            texts += _texts_of(exc)
        else:
            try:
                deadline = time.monotonic() + 5
                while not pool.stats().connect_errors and time.monotonic() < deadline:
                    time.sleep(0.01)
                texts += [repr(pool), repr(pool.config), str(pool.stats())]
            finally:
                pool.close(0.5)
    finally:
        logging.getLogger("poolkeeper").removeHandler(handler)
    return texts, handler.lines


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


# Few examples: each runs the CLI twice (a connect attempt and its fail-fast wait).
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=_passwords, form=st.sampled_from(["url", "kv"]))
def test_the_cli_never_prints_a_password_of_any_shape(password: str, form: str) -> None:
    port = _closed_port()
    if form == "url":
        dsn = f"postgresql://app:{quote(password, safe='')}@127.0.0.1:{port}/db"
    else:
        dsn = f"host=127.0.0.1 port={port} user=app password={_kv_quote(password)}"
    outputs = [
        _cli_output("check", dsn, "--timeout", "1"),
        _cli_output("doctor", "--workers", "2", "--dsn", dsn, "--timeout", "1"),
    ]
    assert not _leaks(outputs, password, quote(password, safe=""), _kv_quote(password))


def test_a_query_password_with_an_at_sign_leaves_no_fragment_in_a_repr() -> None:
    # The '@' inside the query's password makes the text before it look like a userinfo
    # password too; the two overlap, and both must be masked whole.
    # Shorter than the would-be userinfo password, so masking the longer one first
    # used to cut it up and show the rest.
    password = "p@ss/w0rd#x"
    config = PoolConfig.build(f"postgresql://u@127.0.0.1:1/db?password={password}")
    pool = Pool(config=config, open=False)
    for shown in (repr(config), repr(pool), config.redacted_dsn()):
        for fragment in ("ss/w0rd", "#x"):
            assert fragment not in shown, shown
