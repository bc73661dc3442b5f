"""The typer application: options of each command, and the single place errors are shown."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

import poolkeeper
from poolkeeper.cli.errors import CliError, ExitCode, from_library_error, one_line
from poolkeeper.cli.output import print_error
from poolkeeper.errors import ConfigurationError, ConnectionFailed, PoolError, PoolTimeout
from poolkeeper.redact import redact

__all__ = ["app", "run"]

F = TypeVar("F", bound=Callable[..., Any])


def _parser_error(name: str) -> type[Exception]:
    # typer >= 0.2x vendors click; older typers use click itself. Either way
    # BadParameter derives from the parser's UsageError and ClickException.
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name:
            return cls
    raise ImportError(f"typer has no {name}")  # pragma: no cover


_UsageError = _parser_error("UsageError")
_ClickException = _parser_error("ClickException")


@dataclasses.dataclass
class _State:
    debug: bool = False


state = _State()

app = typer.Typer(
    name="poolkeeper",
    help="poolkeeper: see a PostgreSQL pool heal (demo), check a server (check), "
    "size your pools (doctor).",
    add_completion=False,
    no_args_is_help=True,
    # click's plain help: flags show no placeholder and values show the metavar given
    # (N, SECONDS, DSN), where typer's rich panels print <bool> and <list[int]>.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _report(error: CliError) -> None:
    if state.debug:
        sys.stderr.write(redact(traceback.format_exc()))
    print_error(error.line())


def guarded(command: F) -> F:
    """Turn every failure of ``command`` into one ``error: ...`` line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            code = command(*args, **kwargs)
        except (typer.Exit, typer.Abort, _ClickException):
            raise
        except CliError as exc:
            _report(exc)
            raise typer.Exit(exc.code) from None
        except KeyboardInterrupt:
            print_error("error: interrupted; nothing was left running")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except ConfigurationError as exc:
            _report(from_library_error(exc, ExitCode.USAGE, "see docs/configuration.md"))
            raise typer.Exit(ExitCode.USAGE) from None
        except (ConnectionFailed, PoolTimeout) as exc:
            _report(
                from_library_error(exc, ExitCode.CANNOT_CONNECT, "check the DSN and the server")
            )
            raise typer.Exit(ExitCode.CANNOT_CONNECT) from None
        except PoolError as exc:
            _report(from_library_error(exc, ExitCode.FAILED, "rerun with --debug for details"))
            raise typer.Exit(ExitCode.FAILED) from None
        except Exception as exc:
            _report(
                CliError(
                    f"unexpected {type(exc).__name__}: {one_line(str(exc))}",
                    "this is a bug in poolkeeper: rerun with --debug and report the traceback",
                    ExitCode.INTERNAL,
                )
            )
            raise typer.Exit(ExitCode.INTERNAL) from None
        if code:
            raise typer.Exit(int(code))
        return None

    return wrapper  # type: ignore[return-value]


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"poolkeeper {poolkeeper.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and the pool's debug log.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """poolkeeper's command line."""
    if debug:
        _enable_debug()


def _enable_debug() -> None:
    state.debug = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("poolkeeper")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


@app.command(short_help="Watch a small pool lose every backend and heal.")
@guarded
def demo(
    *,
    quick: Annotated[
        bool, typer.Option("--quick", help="A 6-second run (the tests use it).")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            metavar="PATH",
            help="Keep the embedded server's data here (reused by the next run) "
            "instead of a temporary directory.",
            file_okay=False,
        ),
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option("--live/--no-live", help="Live table (default: when stdout is a terminal)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, max=256, metavar="N", help="Threads sharing the sync pool.")
    ] = None,
    tasks: Annotated[
        int | None,
        typer.Option(
            min=0, max=1024, metavar="N", help="asyncio tasks sharing the async pool (0: none)."
        ),
    ] = None,
    max_size: Annotated[
        int | None, typer.Option(min=1, max=100, metavar="N", help="max_size of each pool.")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            min=2.0, max=3600.0, metavar="SECONDS", help="Seconds to run; the kill comes at 40%."
        ),
    ] = None,
) -> int:
    """Watch one small pool serve many threads and asyncio tasks, lose every backend, and heal.

    Without DATABASE_URL it starts a throwaway PostgreSQL (the 'embedded' extra) and
    stops it on exit, Ctrl-C included. With DATABASE_URL it uses that server, writes
    nothing, and terminates only its own pools' backends.
    """
    from poolkeeper.cli import demo as demo_module  # noqa: PLC0415

    scenario = demo_module.QUICK if quick else demo_module.NORMAL
    if duration is not None:
        scenario = dataclasses.replace(scenario, duration=duration, kill_at=duration * 0.4)
    scenario = dataclasses.replace(
        scenario,
        threads=threads if threads is not None else scenario.threads,
        tasks=tasks if tasks is not None else scenario.tasks,
        max_size=max_size if max_size is not None else scenario.max_size,
    )
    return demo_module.run_demo(
        scenario,
        data_dir=str(data_dir) if data_dir is not None else None,
        live=live,
        database_url=os.environ.get("DATABASE_URL", "").strip() or None,
    )


@app.command(short_help="Can we connect, to what, how fast, with which limits?")
@guarded
def check(
    *,
    dsn: Annotated[
        str | None,
        # Described in the docstring: an "Arguments" section would print it as "DSN <str>".
        typer.Argument(metavar="DSN", hidden=True, show_default=False),
    ] = None,
    pings: Annotated[
        int, typer.Option(min=1, max=1000, metavar="N", help="Round trips to time.")
    ] = 10,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.5, max=300.0, metavar="SECONDS", help="Seconds to wait for a connection."
        ),
    ] = 5.0,
    require_tls: Annotated[
        bool, typer.Option("--require-tls", help="Exit 1 if the connection is not encrypted.")
    ] = False,
) -> int:
    """Connect through a pool; report version, TLS, latency and the settings that matter.

    DSN is a postgresql://user@host:port/dbname URL or a 'host=... dbname=...' string;
    without one, DATABASE_URL, then libpq's PG* variables. Exit codes: 0 ok, 1
    --require-tls unmet, 2 bad DSN, 3 cannot connect.
    """
    from poolkeeper.cli.check import run_check  # noqa: PLC0415

    return run_check(dsn, pings=pings, timeout=timeout, require_tls=require_tls)


@app.command(short_help="Do WORKERS x MAX_SIZE connections fit the server?")
@guarded
def doctor(
    *,
    workers: Annotated[
        int,
        typer.Option("--workers", "-w", min=1, metavar="N", help="Processes that each own a pool."),
    ],
    max_size: Annotated[
        int | None,
        typer.Option(
            "--max-size",
            "-m",
            min=1,
            metavar="N",
            help="Each pool's max_size (default: $POOLKEEPER_MAX_SIZE or 10).",
        ),
    ] = None,
    other: Annotated[
        list[int] | None,
        typer.Option(
            "--other",
            min=0,
            metavar="N",
            help="Connections some other client may hold (repeatable).",
        ),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            metavar="DSN",
            help="Server to ask for its limits (default: DATABASE_URL / PG*).",
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Use this max_connections instead of asking a server."
        ),
    ] = None,
    reserved: Annotated[
        int | None,
        typer.Option(
            min=0, metavar="N", help="Reserved connections (default: the server's, else 3)."
        ),
    ] = None,
    server_cores: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="CPU cores of the database server (default: this machine's)."
        ),
    ] = None,
    spindles: Annotated[
        int, typer.Option(min=0, metavar="N", help="Independent disks of the server (SSD: 1).")
    ] = 1,
    timeout: Annotated[
        float,
        typer.Option(min=0.5, max=300.0, metavar="SECONDS", help="Seconds to wait for the server."),
    ] = 5.0,
    explain: Annotated[
        bool, typer.Option("--explain", help="Also print why the sizing rule holds.")
    ] = False,
) -> int:
    """Does WORKERS x MAX_SIZE (+ other pools) fit max_connections? Recommends a max_size.

    The recommendation follows HikariCP's rule of thumb: (server cores x 2) + spindles
    for the whole server. Exit codes: 0 fits, 1 does not fit, 2 bad input, 3 cannot
    connect.
    """
    from poolkeeper.cli.doctor import run_doctor  # noqa: PLC0415

    return run_doctor(
        dsn=dsn,
        workers=workers,
        max_size=max_size,
        other_pools=other or [],
        max_connections=max_connections,
        reserved=reserved,
        server_cores=server_cores,
        spindles=spindles,
        timeout=timeout,
        explain=explain,
    )


@app.command(
    short_help="Benchmark poolkeeper beside its peers on your server.",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@guarded
def bench(
    ctx: typer.Context,
    *,
    dsn: Annotated[
        str | None,
        typer.Option("--dsn", metavar="DSN", help="Server to measure (default: DATABASE_URL)."),
    ] = None,
) -> int:
    """Benchmark poolkeeper beside psycopg_pool, SQLAlchemy, psycopg2 and asyncpg on your
    server. Other options go to the harness: --quick, --rounds N, --json FILE, --help-harness
    (see benchmarks/run.py). Needs a source checkout with the "bench" extra installed.
    """
    from poolkeeper.cli.bench import run_bench  # noqa: PLC0415

    args = ["--help" if arg == "--help-harness" else arg for arg in ctx.args]
    return run_bench(dsn, args)


def _usage_line(exc: Exception) -> str:
    message = str(getattr(exc, "format_message", exc.__str__)()).strip().rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "poolkeeper"
    return f"error: {message}; run '{path} --help' to see what it accepts"


def run(args: list[str], *, debug: bool = False) -> int:
    """Parse ``args`` and run the command; every error becomes one line and an exit code."""
    if debug:
        _enable_debug()
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=args or ["--help"], prog_name="poolkeeper", standalone_mode=False
        )
    except _UsageError as exc:
        print_error(_usage_line(exc))
        return ExitCode.USAGE
    except typer.Abort:
        print_error("error: interrupted; nothing was left running")
        return ExitCode.INTERRUPTED
    except _ClickException as exc:
        print_error(f"error: {one_line(str(exc))}; run 'poolkeeper --help'")
        return int(getattr(exc, "exit_code", ExitCode.FAILED))
    return result if isinstance(result, int) else ExitCode.OK
