"""The ``poolkeeper`` command line: ``demo``, ``check``, ``doctor`` and ``bench``.

:func:`main` is the console script's entry point. It imports typer and rich only
when run, so that a missing ``cli`` extra is a one-line error, not a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

_CLI_PACKAGES = ("typer", "click", "rich")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line (before a "--"), so it can be added last.
    head, sep, tail = _split_at_double_dash(args)
    debug = "--debug" in head or os.environ.get("POOLKEEPER_DEBUG", "") not in ("", "0")
    args = [arg for arg in head if arg != "--debug"] + sep + tail
    try:
        try:
            from poolkeeper.cli.app import run  # noqa: PLC0415
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in _CLI_PACKAGES:
                raise
            sys.stderr.write(
                f"error: the command line needs the 'cli' extra ({exc.name} is not installed); "
                "pip install 'poolkeeper[cli]'\n"
            )
            return 4
        return run(args, debug=debug)
    except KeyboardInterrupt:
        # Ctrl-C outside a command (while importing, say): nothing was started yet.
        sys.stderr.write("error: interrupted; nothing was left running\n")
        return 130


def _split_at_double_dash(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    if "--" in args:
        i = args.index("--")
        return args[:i], ["--"], args[i + 1 :]
    return args, [], []
