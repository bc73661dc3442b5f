"""What SQLSTATE codes mean to the pool, for every driver (each reads the code from
its own exception type and asks here)."""

from __future__ import annotations

__all__ = ["READ_ONLY_SQLSTATE", "SERVER_GONE_SQLSTATES", "is_server_gone_sqlstate"]

#: admin_shutdown, crash_shutdown, cannot_connect_now.
SERVER_GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})

#: read_only_sql_transaction. Not "server gone" by itself: a read-only transaction on
#: a healthy primary raises it too. The pool asks the connection whether it reached a
#: hot standby before concluding the primary was demoted (see ``PoolCore._is_failover``).
READ_ONLY_SQLSTATE = "25006"


def is_server_gone_sqlstate(sqlstate: str | None) -> bool:
    """True for SQLSTATE class 08 (connection exception) and the codes above."""
    return sqlstate is not None and (sqlstate.startswith("08") or sqlstate in SERVER_GONE_SQLSTATES)
