"""Consoles and small formatting helpers shared by the commands."""

from __future__ import annotations

import sys

from rich.console import Console

from poolkeeper.cli.errors import one_line

__all__ = ["err", "fmt_ms", "out", "plural", "print_error", "warn"]

#: Results go to stdout, so they can be piped; diagnostics go to stderr.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(line: str) -> None:
    """Write one ``error: ...`` line on stderr, unwrapped (rich would wrap it)."""
    sys.stderr.write(one_line(line) + "\n")
    sys.stderr.flush()


def warn(text: str) -> None:
    """A non-fatal note on stderr."""
    err.print(f"[yellow]warning:[/] {text}")


def fmt_ms(ms: float) -> str:
    """Milliseconds with sensible precision: 0.42 ms, 3.1 ms, 120 ms."""
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 10:
        return f"{ms:.1f} ms"
    return f"{ms:.0f} ms"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """The count and its noun in agreement: ``1 worker``, ``0 workers``, ``2 workers``."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
