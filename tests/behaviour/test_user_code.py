"""reset="auto" against user code the statement lexer cannot see into: a trigger, a
view, a column default, a function named like a built-in, an operator found first on
search_path. Each runs a function that changes a setting the server reports
(TimeZone); the statement that reaches it names no such function, so only the
reported-settings compare on return can catch it. Proven on the server: the next
borrower of the same backend sees the session fingerprint a fresh one saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from poolkeeper.session_state import CHECK, touches_session
from tests.behaviour.conftest import MakePool
from tests.behaviour.kinds import Kind, backend_pid, commit, execute, fetchval
from tests.test_session_hygiene import FINGERPRINT

#: The session fingerprint as one text value, which every driver fetches alike.
FINGERPRINT_TEXT = f"SELECT f::text FROM ({FINGERPRINT}) AS f"

#: A zone no server starts in: seeing it proves the user code ran.
ZONE = "Pacific/Chatham"
SET_ZONE = f"PERFORM set_config('TimeZone', '{ZONE}', false);"
#: Put before pg_catalog by configure= for the operator attack, so it is the baseline.
OPERATOR_PATH = "pk_uc_ops, pg_catalog, public"

#: attack -> (what the borrower sends, the search_path configure= sets, or None)
ATTACKS: dict[str, tuple[str, str | None]] = {
    "trigger": ("INSERT INTO pk_uc_trig VALUES (1)", None),
    "view": ("SELECT x FROM pk_uc_view", None),
    "column default": ("INSERT INTO pk_uc_default (a) VALUES (1)", None),
    "built-in name": ("SELECT lower(1)", None),
    "operator before pg_catalog": ("SELECT 1 + 1", OPERATOR_PATH),
}


@pytest.fixture(scope="module")
def _user_code(dsn: str) -> Iterator[None]:
    """The server-side code each attack reaches; all dropped afterwards."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "CREATE OR REPLACE FUNCTION pk_uc_set_zone() RETURNS int LANGUAGE plpgsql AS "
            f"$$ BEGIN {SET_ZONE} RETURN 1; END $$"
        )
        admin.execute(
            "CREATE OR REPLACE FUNCTION pk_uc_trig_fn() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {SET_ZONE} RETURN NEW; END $$"
        )
        admin.execute("CREATE TABLE IF NOT EXISTS pk_uc_trig (x int)")
        admin.execute(
            "CREATE OR REPLACE TRIGGER pk_uc_trig_set BEFORE INSERT ON pk_uc_trig "
            "FOR EACH ROW EXECUTE FUNCTION pk_uc_trig_fn()"
        )
        admin.execute("CREATE OR REPLACE VIEW pk_uc_view AS SELECT pk_uc_set_zone() AS x")
        admin.execute(
            "CREATE TABLE IF NOT EXISTS pk_uc_default (a int, b int DEFAULT pk_uc_set_zone())"
        )
        # pg_catalog has lower(text) but no lower(int): lower(1) finds this one.
        admin.execute(
            "CREATE OR REPLACE FUNCTION public.lower(int) RETURNS int LANGUAGE plpgsql AS "
            f"$$ BEGIN {SET_ZONE} RETURN $1; END $$"
        )
        admin.execute("CREATE SCHEMA IF NOT EXISTS pk_uc_ops")
        admin.execute(
            "CREATE OR REPLACE FUNCTION pk_uc_ops.plus(int, int) RETURNS int "
            f"LANGUAGE plpgsql AS $$ BEGIN {SET_ZONE} RETURN $1 OPERATOR(pg_catalog.+) $2; "
            "END $$"
        )
        admin.execute(
            "DO $$ BEGIN CREATE OPERATOR pk_uc_ops.+ "
            "(LEFTARG = int, RIGHTARG = int, FUNCTION = pk_uc_ops.plus); "
            "EXCEPTION WHEN duplicate_function THEN NULL; END $$"
        )
    yield
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP SCHEMA IF EXISTS pk_uc_ops CASCADE")
        admin.execute("DROP FUNCTION IF EXISTS public.lower(int)")
        admin.execute("DROP TABLE IF EXISTS pk_uc_default")
        admin.execute("DROP VIEW IF EXISTS pk_uc_view")
        admin.execute("DROP TABLE IF EXISTS pk_uc_trig")
        admin.execute("DROP FUNCTION IF EXISTS pk_uc_trig_fn()")
        admin.execute("DROP FUNCTION IF EXISTS pk_uc_set_zone()")


@pytest.mark.usefixtures("_user_code")
@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_user_code_that_changes_a_reported_setting_reaches_no_next_borrower(
    make_pool: MakePool, kind: Kind, attack: str
) -> None:
    statement, search_path = ATTACKS[attack]
    assert touches_session(statement) is CHECK  # the lexer sees no session change

    async def set_search_path(conn: Any) -> None:
        await execute(conn, f"SET search_path TO {search_path}")
        await commit(conn)

    # Autocommit from the start: the change is committed (a rollback would undo it),
    # and no client-side attribute changes, so nothing but the flag sends the return
    # off the fast path.
    pool = make_pool(
        min_size=1,
        max_size=1,
        connect_kwargs={"autocommit": True},
        configure=kind.hook(set_search_path) if search_path else None,
    )
    async with pool.connection() as conn:
        pid = backend_pid(conn)
        fresh = await fetchval(conn, FINGERPRINT_TEXT)
    async with pool.connection() as conn:
        await execute(conn, statement)
        assert await fetchval(conn, "SHOW TimeZone") == ZONE  # the user code ran
    async with pool.connection() as conn:
        assert backend_pid(conn) == pid, "the connection was replaced, not reset"
        assert await fetchval(conn, FINGERPRINT_TEXT) == fresh
    assert pool.stats().resets == 1


@pytest.mark.usefixtures("_user_code")
async def test_user_code_that_changes_nothing_costs_no_reset(make_pool: MakePool) -> None:
    # Every attack's statement needs a settings check; one that finds the settings as
    # they were is not a reset.
    pool = make_pool(min_size=1, max_size=1, connect_kwargs={"autocommit": True})
    for statement in ("SELECT count(*) FROM pk_uc_trig", "SELECT 1 + 1", "SELECT lower('A')"):
        assert touches_session(statement) is CHECK
        async with pool.connection() as conn:
            await fetchval(conn, statement)
    assert pool.stats().resets == 0
