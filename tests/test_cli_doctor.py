"""``poolkeeper doctor``: the budget arithmetic, and the command on the test server."""

from __future__ import annotations

import shlex

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from poolkeeper.cli.app import app
from poolkeeper.cli.doctor import SIZING_RULE, connection_budget

runner = CliRunner()


def test_fits_with_room_to_spare() -> None:
    budget = connection_budget(
        workers=4, max_size=10, max_connections=100, superuser_reserved=3, server_cores=4
    )
    assert budget.needed == 40
    assert budget.available == 97
    assert budget.fits
    assert budget.headroom == 57
    # HikariCP: 4 cores x 2 + 1 spindle = 9 for the server, shared by 4 workers.
    assert budget.rule_total == 9
    assert budget.recommended_max_size == 2
    assert budget.largest_fitting_max_size == 24


def test_does_not_fit_counts_other_pools_and_both_reserves() -> None:
    budget = connection_budget(
        workers=8,
        max_size=20,
        max_connections=100,
        superuser_reserved=3,
        reserved=2,
        other_pools=(10, 5),
        server_cores=16,
        spindles=2,
    )
    assert budget.needed == 8 * 20 + 15
    assert budget.available == 95
    assert not budget.fits
    assert budget.headroom == 95 - 175
    assert budget.largest_fitting_max_size == (95 - 15) // 8
    # The rule's share (34 // 8 = 4) is below what fits (10), so it wins.
    assert budget.recommended_max_size == 4


def test_budget_caps_the_rule() -> None:
    budget = connection_budget(
        workers=10, max_size=5, max_connections=25, superuser_reserved=3, server_cores=32
    )
    assert budget.rule_total == 65
    assert budget.largest_fitting_max_size == 2
    assert budget.recommended_max_size == 2


def test_more_workers_than_the_rule_still_recommends_one() -> None:
    budget = connection_budget(
        workers=50, max_size=1, max_connections=200, superuser_reserved=3, server_cores=2
    )
    assert budget.rule_total == 5
    assert budget.recommended_max_size == 1
    assert budget.fits


def test_nothing_fits() -> None:
    budget = connection_budget(
        workers=10, max_size=1, max_connections=10, superuser_reserved=3, server_cores=2
    )
    assert not budget.fits
    assert budget.largest_fitting_max_size == 0
    assert budget.recommended_max_size == 0


@pytest.mark.parametrize(
    "changes",
    [{"workers": 0}, {"max_size": 0}, {"server_cores": 0}, {"other_pools": (-1,)}],
)
def test_impossible_inputs(changes: dict[str, object]) -> None:
    args: dict[str, object] = {
        "workers": 1,
        "max_size": 1,
        "max_connections": 10,
        "superuser_reserved": 3,
        "server_cores": 1,
    }
    args.update(changes)
    with pytest.raises(ValueError):
        connection_budget(**args)  # type: ignore[arg-type]


def test_command_offline_fits() -> None:
    result = runner.invoke(
        app,
        shlex.split("doctor --workers 4 --max-size 5 --max-connections 100 --server-cores 4"),
    )
    assert result.exit_code == 0, result.output
    assert "fits" in result.output
    assert "max_size=2" in result.output
    assert "HikariCP" in result.output


def test_command_offline_does_not_fit_exits_1() -> None:
    result = runner.invoke(
        app,
        shlex.split(
            "doctor -w 10 -m 20 --other 30 --max-connections 100 --reserved 3 --server-cores 2"
        ),
    )
    assert result.exit_code == 1, result.output
    assert "does not fit" in result.output
    assert "= 230" in result.output  # 10 x 20 + 30 needed


def test_command_asks_the_server_and_names_it_without_the_password(dsn: str) -> None:
    params = conninfo_to_dict(dsn)
    # The test server trusts local connections, so this password is never even sent.
    with_password = make_conninfo(dsn, password="doctor-s3cret")
    result = runner.invoke(
        app,
        ["doctor", "--workers", "2", "--max-size", "3", "--dsn", with_password,
         "--server-cores", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "needed     2 workers x max_size 3 = 6" in result.output
    assert "max_connections" in result.output
    limits = next(line for line in result.output.splitlines() if "read from" in line)
    assert f"{params.get('host', '')}:{params.get('port', 5432)}/" in limits, limits
    assert "doctor-s3cret" not in result.output


def test_the_sizing_paragraph_is_printed_only_when_asked() -> None:
    args = shlex.split("doctor -w 2 -m 2 --max-connections 100 --server-cores 2")
    plain = runner.invoke(app, args)
    explained = runner.invoke(app, [*args, "--explain"])
    assert plain.exit_code == explained.exit_code == 0
    assert SIZING_RULE[:40] not in plain.output
    assert "--explain" in plain.output
    assert len(plain.output.splitlines()) <= 10, plain.output
    assert " ".join(SIZING_RULE.split()) in " ".join(explained.output.split())


def test_counts_of_one_are_singular() -> None:
    result = runner.invoke(
        app,
        shlex.split(
            "doctor -w 1 -m 98 --max-connections 100 --reserved 3 --server-cores 1 --spindles 1"
        ),
    )
    assert result.exit_code == 1, result.output
    assert "1 worker x max_size 98" in result.output
    assert "(1 core x 2) + 1 spindle = 3 connections" in result.output
    assert "1 connection over" in result.output


def test_command_missing_workers_is_a_usage_error() -> None:
    from poolkeeper.cli import main

    assert main(["doctor", "--max-connections", "100"]) == 2
