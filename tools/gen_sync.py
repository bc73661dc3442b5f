"""Write the sync pool's shared methods (``pool_base.py``) from the async source.

Usage: ``python tools/gen_sync.py`` writes the file; ``--check`` exits 1 if the file
on disk differs from what would be written (``make test`` runs the same comparison
in ``tests/test_generated.py``).

The transformation works on tokens, so strings and comments are never touched:

* ``async`` before ``def``/``with``/``for`` and every ``await`` are dropped;
* ``Awaitable[X]`` becomes ``X``;
* the names in ``RENAMES`` are replaced (the async spelling of a type or decorator
  by the sync one, the class by its sync name);

then ``ruff`` formats the result and sorts its imports, as it would a hand-written
module. Differences between the two concurrency models are not the generator's
business: the shells provide primitives with the same name (see the source's
docstring), so the generator stays this small.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "poolkeeper" / "async_pool_base.py"
TARGET = ROOT / "src" / "poolkeeper" / "pool_base.py"

RENAMES = {
    "AsyncPoolBase": "PoolBase",
    "AsyncDriver": "SyncDriver",
    "AsyncIterator": "Iterator",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "asynccontextmanager": "contextmanager",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
}

ASYNC_KEYWORDS = ("def", "with", "for")

HEADER = (
    "# Generated from async_pool_base.py by tools/gen_sync.py: do not edit.\n"
    "# Change the async source and run `make generate`.\n"
)

DOCSTRING = '''"""``PoolBase``: what both pools do off the hot path, for the sync ``Pool``.

Generated from ``async_pool_base.py``, which explains the primitives it relies on.
"""
'''


def _offsets(source: str) -> list[int]:
    """Where each line starts in ``source`` (tokenize counts lines from 1)."""
    starts = [0, 0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _closing_brackets(tokens: list[tokenize.TokenInfo]) -> set[int]:
    """Indices of the ``]`` that close an ``Awaitable[``."""
    closing: set[int] = set()
    opened: list[bool] = []  # per open "[": does it belong to Awaitable?
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.OP:
            continue
        if tok.string == "[":
            opened.append(i > 0 and tokens[i - 1].string == "Awaitable")
        elif tok.string == "]" and opened.pop():
            closing.add(i)
    return closing


def _rewrite(tokens: list[tokenize.TokenInfo], i: int) -> tuple[int, str] | None:
    """What becomes of token ``i``: ``(tokens to drop with it, replacement)``, or None
    to keep it. ``(1, "")`` drops it and the space up to the next token."""
    tok = tokens[i]
    if tok.type == tokenize.STRING and tok.string.strip("'\"") in RENAMES:
        return 0, repr(RENAMES[tok.string.strip("'\"")])  # a name quoted in __all__
    if tok.type != tokenize.NAME:
        return None
    following = tokens[i + 1].string
    if tok.string == "await" or (tok.string == "async" and following in ASYNC_KEYWORDS):
        return 1, ""
    if tok.string == "Awaitable" and following == "[":
        return 2, ""
    if tok.string in RENAMES:
        return 0, RENAMES[tok.string]
    return None


def unasync(source: str) -> str:
    """The token-level async-to-sync rewrite of ``source`` (before formatting)."""
    line_at = _offsets(source)
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))

    def offset(position: tuple[int, int]) -> int:
        return line_at[position[0]] + position[1]

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in characters
    for i in _closing_brackets(tokens):
        edits.append((offset(tokens[i].start), offset(tokens[i].end), ""))
    for i in range(len(tokens)):
        change = _rewrite(tokens, i)
        if change is None:
            continue
        reach, text = change
        # reach 1: up to the next token (the space too); 2: through the next ("[").
        until = {0: tokens[i].end, 1: tokens[i + 1].start, 2: tokens[i + 1].end}[reach]
        edits.append((offset(tokens[i].start), offset(until), text))
    out = source
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def _replace_docstring(source: str) -> str:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    first = next(tok for tok in tokens if tok.type == tokenize.STRING)
    assert first.start[1] == 0, "the source must open with its module docstring"
    lines = source.splitlines(keepends=True)
    rest = "".join(lines[first.end[0] :])
    return HEADER + DOCSTRING + rest


def _ruff(args: list[str], source: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise SystemExit(f"ruff {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def generate() -> str:
    """The text ``pool_base.py`` must hold."""
    code = _replace_docstring(unasync(SOURCE.read_text()))
    # Imports that only the async spelling needed go, the rest are sorted again.
    code = _ruff(["check", "--fix", "--quiet", "--select", "I,F401,F811"], code)
    return _ruff(["format", "--quiet"], code)


def main(argv: list[str]) -> int:
    """Write ``pool_base.py``, or with ``--check`` report whether it is up to date."""
    expected = generate()
    if "--check" in argv:
        if TARGET.read_text() != expected:
            print(f"{TARGET} is out of date: run `make generate`")
            return 1
        return 0
    TARGET.write_text(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
