"""Which SQL can leave session state behind for the next borrower, and how to clear it.

``reset="auto"`` must not cost a round trip per borrow (asyncpg's pool pays one on
every release and loses half its throughput for it), so the drivers look at each
statement's text as it is sent and mark the connection *dirty* only when it could
change session state: ``SET``/``RESET`` (role, search_path, session authorization,
any GUC), ``set_config()``, temporary objects, session advisory locks, ``LISTEN``,
``PREPARE`` and ``DECLARE``. A dirty connection is reset with :data:`RESET_SQL` on
return; a clean one costs a flag read. The scan errs towards "dirty": a false
positive costs one reset, a false negative would leak state.
"""

from __future__ import annotations

import re

__all__ = ["KNOWN_VERDICTS", "RESET_SQL", "touches_session"]

_SESSION_SQL = re.compile(
    r"(?:^|;)\s*(?:set|reset|listen|prepare|declare|load|discard)\b"
    r"|\bset_config\s*\("
    r"|\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\("
    r"|\btemp(?:orary)?\b"
    r"|\bsession\s+authorization\b"
)
# A statement can only touch the session through its first word, unless one of
# these appears somewhere in it (';' for a second statement): the cheap test first.
_LEADING = re.compile(r"\s*(?:set|reset|listen|prepare|declare|load|discard)\b")
_ANYWHERE = (";", "set_config", "advisory_lock", "temp", "authorization")

#: DISCARD ALL = CLOSE ALL, SET SESSION AUTHORIZATION DEFAULT, RESET ALL, DEALLOCATE ALL,
#: UNLISTEN *, pg_advisory_unlock_all(), DISCARD PLANS/TEMP/SEQUENCES. psycopg notices
#: the DEALLOCATE and forgets its own prepared statements, so its cache stays right.
RESET_SQL = "DISCARD ALL"


#: Verdicts of :func:`touches_session` by query text. Applications send the same few
#: hundred statements over and over, so the drivers' cursors look a query up here
#: (one hashed dict read) before paying for the scan. Bounded: cleared when full, so
#: SQL built with literals in it cannot grow it without limit.
KNOWN_VERDICTS: dict[str | bytes, bool] = {}
_KNOWN_MAX = 4096


def touches_session(query: object) -> bool:
    """True when ``query`` may change state that outlives its transaction.

    ``str`` and ``bytes`` are scanned (and the verdict remembered in
    :data:`KNOWN_VERDICTS`); anything else (a composed ``sql.SQL`` object, say) is
    assumed to touch the session. A query seen before costs one dict lookup; a new
    one a lowercase copy, a few substring searches and one anchored match.
    """
    try:
        # Hot drivers look here themselves before calling; the others get it here.
        return KNOWN_VERDICTS[query]  # type: ignore[index]
    except (KeyError, TypeError):  # unseen, or unhashable (bytearray, sql.Composed)
        pass
    if isinstance(query, str):
        text = query.lower()
    elif isinstance(query, (bytes, bytearray, memoryview)):
        text = bytes(query).decode("utf-8", "replace").lower()
    else:
        return True
    verdict = _scan(text)
    if isinstance(query, (str, bytes)):
        if len(KNOWN_VERDICTS) >= _KNOWN_MAX:
            KNOWN_VERDICTS.clear()
        KNOWN_VERDICTS[query] = verdict
    return verdict


def _scan(text: str) -> bool:
    for marker in _ANYWHERE:
        if marker in text:
            return _SESSION_SQL.search(text) is not None
    return _LEADING.match(text) is not None
