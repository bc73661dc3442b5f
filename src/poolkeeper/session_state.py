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

__all__ = ["RESET_SQL", "touches_session"]

_SESSION_SQL = re.compile(
    rb"(?:^|;)\s*(?:SET|RESET|LISTEN|PREPARE|DECLARE|LOAD|DISCARD)\b"
    rb"|\bset_config\s*\("
    rb"|\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\("
    rb"|\bTEMP(?:ORARY)?\b"
    rb"|\bSESSION\s+AUTHORIZATION\b",
    re.IGNORECASE,
)

#: DISCARD ALL = CLOSE ALL, SET SESSION AUTHORIZATION DEFAULT, RESET ALL, DEALLOCATE ALL,
#: UNLISTEN *, pg_advisory_unlock_all(), DISCARD PLANS/TEMP/SEQUENCES. psycopg notices
#: the DEALLOCATE and forgets its own prepared statements, so its cache stays right.
RESET_SQL = "DISCARD ALL"


def touches_session(query: object) -> bool:
    """True when ``query`` may change state that outlives its transaction.

    ``str`` and ``bytes`` are scanned; anything else (a composed ``sql.SQL``
    object, say) is assumed to touch the session.
    """
    if isinstance(query, str):
        return _SESSION_SQL.search(query.encode("utf-8", "replace")) is not None
    if isinstance(query, (bytes, bytearray, memoryview)):
        return _SESSION_SQL.search(bytes(query)) is not None
    return True
