"""``poolkeeper doctor``: does N processes x max_size connections fit the server?

The arithmetic is :func:`connection_budget`, a pure function; the command only
gathers its inputs (from the server, or from options) and prints the verdict.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from poolkeeper.cli.errors import CliError, ExitCode
from poolkeeper.cli.output import out, plural

__all__ = ["SIZING_RULE", "Budget", "connection_budget", "render_budget"]

#: Why the rule holds: printed by ``doctor --explain`` and copied in docs/cli.md.
SIZING_RULE = (
    "HikariCP's rule of thumb (from its wiki page 'About Pool Sizing') is "
    "connections = (server cores x 2) + effective spindles, counted for the database "
    "server as a whole, across every client. A server only runs as many queries at once "
    "as it has cores; past that, extra connections do not add throughput, they queue "
    "inside PostgreSQL for CPU, locks and disk, and every query gets slower. The x2 "
    "covers the time a backend waits on I/O; spindles add one per disk that can seek "
    "on its own (count an SSD or cloud volume as 1). Divide that total by the number of "
    "processes sharing the server to get each pool's max_size: callers that then wait "
    "queue in the pool, which is cheap and fair, instead of in the server, which is "
    "neither. It is a starting point to measure from, not a law."
)


@dataclasses.dataclass(frozen=True)
class Budget:
    """The verdict of :func:`connection_budget`; every number is a count of connections."""

    workers: int
    max_size: int
    other_pools: tuple[int, ...]
    max_connections: int
    reserved: int
    server_cores: int
    spindles: int
    #: What this deployment may open at peak: workers x max_size + other pools.
    needed: int
    #: What the server lets ordinary users open: max_connections - reserved.
    available: int
    #: available - needed (negative when it does not fit).
    headroom: int
    #: HikariCP's total for the server: cores x 2 + spindles.
    rule_total: int
    #: The largest max_size that still fits the server's budget (0: not even 1 fits).
    largest_fitting_max_size: int
    #: min(the rule's share per worker, the largest that fits), at least 1 when anything fits.
    recommended_max_size: int

    @property
    def fits(self) -> bool:
        """Whether ``needed`` connections can all be open at once."""
        return self.needed <= self.available


def connection_budget(
    *,
    workers: int,
    max_size: int,
    max_connections: int,
    superuser_reserved: int,
    reserved: int = 0,
    other_pools: Sequence[int] = (),
    server_cores: int,
    spindles: int = 1,
) -> Budget:
    """Check ``workers`` processes x ``max_size`` (+ ``other_pools``) against the server.

    ``superuser_reserved`` and ``reserved`` are the server's
    ``superuser_reserved_connections`` and (PostgreSQL 16+) ``reserved_connections``.
    Raises ``ValueError`` for impossible inputs.
    """
    for name, value, minimum in (
        ("workers", workers, 1),
        ("max_size", max_size, 1),
        ("max_connections", max_connections, 1),
        ("superuser_reserved", superuser_reserved, 0),
        ("reserved", reserved, 0),
        ("server_cores", server_cores, 1),
        ("spindles", spindles, 0),
    ):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, not {value}")
    if any(size < 0 for size in other_pools):
        raise ValueError("other pool sizes must be >= 0")
    others = sum(other_pools)
    available = max(0, max_connections - superuser_reserved - reserved)
    needed = workers * max_size + others
    largest = max(0, (available - others) // workers)
    rule_total = server_cores * 2 + spindles
    rule_share = max(1, rule_total // workers)
    recommended = min(rule_share, largest)
    return Budget(
        workers=workers,
        max_size=max_size,
        other_pools=tuple(other_pools),
        max_connections=max_connections,
        reserved=superuser_reserved + reserved,
        server_cores=server_cores,
        spindles=spindles,
        needed=needed,
        available=available,
        headroom=available - needed,
        rule_total=rule_total,
        largest_fitting_max_size=largest,
        recommended_max_size=recommended,
    )


def render_budget(
    budget: Budget, *, cores_note: str = "", server: str | None = None, explain: bool = False
) -> None:
    """Print the budget and the verdict; ``server`` is where the limits were read from,
    ``explain`` adds the paragraph on why the sizing rule holds."""
    others = " + ".join(str(n) for n in budget.other_pools)
    others_text = f" + other pools {others}" if budget.other_pools else ""
    out.print("[bold]Connection budget[/]")
    if server is not None:
        out.print(f"  limits     read from {server}")
    out.print(
        f"  needed     {plural(budget.workers, 'worker')} x max_size {budget.max_size}"
        f"{others_text} = [bold]{budget.needed}[/]"
    )
    out.print(
        f"  available  max_connections {budget.max_connections} - reserved {budget.reserved} "
        f"= [bold]{budget.available}[/]"
    )
    if budget.fits:
        out.print(f"  verdict    [green]fits[/], {budget.headroom} to spare")
    else:
        out.print(
            f"  verdict    [red]does not fit[/]: {plural(-budget.headroom, 'connection')} over; "
            "at peak "
            "the last ones get 'too many clients'"
        )
    out.print(
        f"  rule       ({plural(budget.server_cores, 'core')} x 2) + "
        f"{plural(budget.spindles, 'spindle')} = {plural(budget.rule_total, 'connection')} "
        "for the server"
    )
    if cores_note:
        out.print(f"  [dim]assumed    {cores_note}[/]")
    if budget.largest_fitting_max_size == 0:
        out.print(
            "  recommend  nothing fits: fewer workers, fewer other pools, a larger "
            "max_connections, or PgBouncer in front of the server"
        )
    else:
        out.print(
            f"  recommend  max_size=[bold]{budget.recommended_max_size}[/] per worker "
            f"(largest that fits: {budget.largest_fitting_max_size})"
        )
    if explain:
        out.print()
        out.print(SIZING_RULE, soft_wrap=False)
    else:
        out.print("  [dim]the rule is HikariCP's rule of thumb; --explain says why it holds[/]")


def run_doctor(
    *,
    dsn: str | None,
    workers: int,
    max_size: int | None,
    other_pools: Sequence[int],
    max_connections: int | None,
    reserved: int | None,
    server_cores: int | None,
    spindles: int,
    timeout: float,
    explain: bool = False,
) -> int:
    """The ``doctor`` command: returns the exit code (0 fits, 1 does not)."""
    if max_size is None:
        max_size = _max_size_from_env()
    superuser_reserved = reserved if reserved is not None else 3
    extra_reserved = 0
    server = None
    if max_connections is None:
        # Ask the server: its limits decide, not what we guess.
        from poolkeeper.cli.check import server_settings  # noqa: PLC0415

        server, settings = server_settings(dsn, timeout=timeout)
        max_connections = int(settings["max_connections"])
        if reserved is None:
            superuser_reserved = int(settings.get("superuser_reserved_connections", "3"))
            extra_reserved = int(settings.get("reserved_connections", "0"))
    cores_note = ""
    if server_cores is None:
        server_cores = os.cpu_count() or 1
        cores_note = (
            f"the server has this machine's {plural(server_cores, 'core')}; "
            "pass --server-cores to say otherwise"
        )
    try:
        budget = connection_budget(
            workers=workers,
            max_size=max_size,
            max_connections=max_connections,
            superuser_reserved=superuser_reserved,
            reserved=extra_reserved,
            other_pools=other_pools,
            server_cores=server_cores,
            spindles=spindles,
        )
    except ValueError as exc:
        raise CliError(str(exc), "see 'poolkeeper doctor --help'", ExitCode.USAGE) from None
    render_budget(budget, cores_note=cores_note, server=server, explain=explain)
    return ExitCode.OK if budget.fits else ExitCode.FAILED


def _max_size_from_env() -> int:
    raw = os.environ.get("POOLKEEPER_MAX_SIZE", "").strip()
    if not raw:
        return 10  # the pool's default
    try:
        return int(raw)
    except ValueError:
        raise CliError(
            f"POOLKEEPER_MAX_SIZE={raw!r} is not a whole number",
            "fix the variable or pass --max-size",
            ExitCode.USAGE,
        ) from None
