"""What SQLSTATE codes mean to the pool, for every driver (each reads the code from
its own exception type and asks here)."""

from __future__ import annotations

__all__ = [
    "READ_ONLY_SQLSTATE",
    "REPLAY_LAG_SQL",
    "SERVER_GONE_SQLSTATES",
    "is_server_gone_sqlstate",
]

#: admin_shutdown, crash_shutdown, cannot_connect_now.
SERVER_GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})

#: read_only_sql_transaction. Not "server gone" by itself: a read-only transaction on
#: a healthy primary raises it too. The pool asks the connection whether it reached a
#: hot standby before concluding the primary was demoted (see ``PoolCore._is_failover``).
READ_ONLY_SQLSTATE = "25006"


def is_server_gone_sqlstate(sqlstate: str | None) -> bool:
    """True for SQLSTATE class 08 (connection exception) and the codes above."""
    return sqlstate is not None and (sqlstate.startswith("08") or sqlstate in SERVER_GONE_SQLSTATES)


# Seconds a standby's replay is behind; 0 on a primary and on a standby that has
# replayed all it received (an idle primary sends nothing, so the last replayed
# commit grows old without the standby lagging); NULL when unknown.
REPLAY_LAG_SQL = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() "
    "OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0 "
    "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END"
)
