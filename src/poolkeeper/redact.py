"""Keep secrets out of every message, log line and ``repr``: the one place that masks them.

Everything the pool shows that may hold a DSN, connection keywords or a driver's
message (errors, log lines, reprs, the CLI's output) goes through :func:`redact`.
Two layers:

* the secrets we know (the configured password and ``sslpassword``, whatever a
  callable DSN returned lately) are replaced wherever they appear, even in a
  driver's message that quotes a fragment of the conninfo;
* text shaped like a credential is masked even when the secret was never seen,
  e.g. in a DSN too malformed to parse: a URL's userinfo password (everything from
  the first ``:`` after ``://`` to the *last* ``@`` of the token, so an unencoded
  ``@`` or ``/`` in the password is masked whole), and every libpq secret keyword
  (:data:`SECRET_KEYS`) in ``key=value`` form, in a URL's query string and as a
  Python mapping's key.

``sslkey``, ``sslcert``, ``sslrootcert`` and ``passfile`` name files; they are shown.
The pool never reads a passfile or a key file itself (libpq does).
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MASK", "SECRET_KEYS", "SecretRegistry", "mask_mapping", "redact", "secrets"]

MASK = "***"

#: libpq connection keywords whose value is a secret (asyncpg uses the same names).
SECRET_KEYS = frozenset({"password", "sslpassword"})

_KEYS = "|".join(sorted(SECRET_KEYS, key=len, reverse=True))
# A URL with userinfo: scheme://user:secret@host. The token runs to the next space;
# the password runs from the first ':' to the token's last '@', so that an '@', '/'
# or '?' the user forgot to percent-encode is masked with the rest of it.
_URL_TOKEN = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^\s:/@]*:)(?P<rest>\S*)", re.I)
_KV_SECRET = re.compile(
    rf"(?P<head>(?<![\w.])(?:{_KEYS})\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)+)", re.I
)
_QUERY_SECRET = re.compile(rf"(?P<head>[?&](?:{_KEYS})=)(?P<pw>[^&\s'\"]*)", re.I)
_MAPPING_SECRET = re.compile(
    rf"(?P<head>(?P<q>['\"])(?:{_KEYS})(?P=q)\s*:\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,}}\s]+)",
    re.I,
)

#: How many recent secrets are remembered: a callable DSN that mints a token per
#: connect must not grow the registry (nor the cost of ``redact``) without bound.
REGISTRY_CAP = 128


class SecretRegistry:
    """The process-wide set of recent secret strings to mask (thread-safe, bounded).

    The most recently added ``REGISTRY_CAP`` secrets are kept; an older one (a token
    a callable DSN minted long ago) is forgotten. The credential-shaped patterns of
    :func:`redact` still mask it in any conninfo text.
    """

    def __init__(self, cap: int = REGISTRY_CAP) -> None:
        self._lock = threading.Lock()
        self._cap = cap
        self._recent: OrderedDict[str, None] = OrderedDict()
        # Longest first, so that a secret containing another is masked whole.
        self._known: tuple[str, ...] = ()

    def add(self, secret: object) -> None:
        """Remember ``secret`` so that it is masked from now on (short strings are ignored)."""
        # One- and two-character "passwords" would mask ordinary text everywhere.
        if not isinstance(secret, str) or len(secret) < 3:
            return
        with self._lock:
            recent = self._recent
            if secret in recent:
                recent.move_to_end(secret)
                return
            recent[secret] = None
            while len(recent) > self._cap:
                recent.popitem(last=False)
            self._known = tuple(sorted(recent, key=len, reverse=True))

    def add_from(self, params: Mapping[str, Any]) -> None:
        """Remember every secret keyword's value in ``params`` (conninfo or kwargs)."""
        for key in SECRET_KEYS:
            self.add(params.get(key))

    def known(self) -> tuple[str, ...]:
        """The secrets remembered now, longest first."""
        return self._known

    def reinit_after_fork(self) -> None:
        """A forked child's lock may have been held by a thread that is gone: make a new one."""
        self._lock = threading.Lock()


secrets = SecretRegistry()


def _mask_url(match: re.Match[str]) -> str:
    rest = match["rest"]
    at = rest.rfind("@")
    if at < 0:
        # No userinfo password here (scheme://host:port/...): leave it as it is.
        return match[0]
    return f"{match['head']}{MASK}{rest[at:]}"


def _mask_spans(text: str, known: Iterable[str]) -> str:
    """Mask every place any of ``known`` occurs in ``text``, as the union of those places.

    Replacing one secret at a time would leave a fragment of another that overlaps it
    (a URL's query password and what looks like a userinfo password can share characters).
    """
    spans: list[tuple[int, int]] = []
    for secret in known:
        start = text.find(secret)
        while start >= 0:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text
    spans.sort()
    pieces: list[str] = []
    kept_from = 0
    begin, end = spans[0]
    for start, stop in spans[1:]:
        if start <= end:
            end = max(end, stop)
            continue
        pieces += (text[kept_from:begin], MASK)
        kept_from, begin, end = end, start, stop
    pieces += (text[kept_from:begin], MASK, text[end:])
    return "".join(pieces)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Return ``text`` with every known or credential-shaped secret replaced by ``***``."""
    known = secrets.known()
    if extra:
        known = tuple(sorted({*known, *(s for s in extra if s)}, key=len, reverse=True))
    text = _mask_spans(text, known)
    text = _URL_TOKEN.sub(_mask_url, text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)
    text = _MAPPING_SECRET.sub(lambda m: f"{m['head']}'{MASK}'", text)
    return _KV_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)


def mask_mapping(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` (conninfo or connect keywords) with every secret value masked."""
    return {k: (MASK if str(k).lower() in SECRET_KEYS else v) for k, v in params.items()}


def _reinit_after_fork() -> None:
    secrets.reinit_after_fork()


os.register_at_fork(after_in_child=_reinit_after_fork)
