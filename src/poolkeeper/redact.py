"""Keep passwords out of every message, log line and ``repr``.

Two layers: the secrets we know (the configured password, whatever a callable
DSN returned last) are replaced wherever they appear, and patterns that look like
credentials (``user:pw@`` in a URL, ``password=…`` in a conninfo) are masked even
when we never saw the secret, e.g. in a DSN too malformed to parse.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

__all__ = ["MASK", "SecretRegistry", "redact", "secrets"]

MASK = "***"

_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)", re.I
)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s]+)", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&\s]*)", re.I)


class SecretRegistry:
    """The process-wide set of secret strings to mask (thread-safe, append-only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: frozenset[str] = frozenset()

    def add(self, secret: str | None) -> None:
        """Remember ``secret`` so that it is masked from now on (short strings are ignored)."""
        # One- and two-character "passwords" would mask ordinary text everywhere.
        if not secret or len(secret) < 3 or secret in self._known:
            return
        with self._lock:
            self._known = self._known | {secret}

    def known(self) -> frozenset[str]:
        """The secrets registered so far."""
        return self._known


secrets = SecretRegistry()


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Return ``text`` with every known or credential-shaped secret replaced by ``***``."""
    for secret in sorted({*secrets.known(), *(s for s in extra if s)}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)
    text = _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)
