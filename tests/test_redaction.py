"""Redaction's own layers, without a pool: the registry of known passwords, and
the shapes a password never registered takes.

That no password reaches an error, log line, repr or stats of a pool is a behaviour
of both pools: tests/behaviour/test_redaction.py."""

from __future__ import annotations

from poolkeeper.redact import redact, secrets


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
