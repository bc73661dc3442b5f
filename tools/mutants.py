"""Curated mutation testing: does the suite notice when the product's key steps break?

Usage (``make mutants`` runs the first form)::

    python tools/mutants.py                  # every mutant; a summary at the end
    python tools/mutants.py --only fork-neutralise-noop lifetime-expiry-never
    python tools/mutants.py --list           # what each mutant breaks, and its tests
    python tools/mutants.py --check          # each snippet occurs exactly once; no tests
    python tools/mutants.py --report FILE    # also write the results as a Markdown table

Each entry of :data:`MUTANTS` replaces one snippet of source (it must occur exactly
once in its file, or the run stops and says which entry to update) by a broken
version, in a scratch copy of the repository, and runs the tests meant to catch that
break (``-x``, bounded by a timeout) against the copy. A mutant is *killed* when
those tests fail (or time out), *survived* when they pass. A mutation of
``async_pool_base.py`` is carried into the generated ``pool_base.py`` by running
``tools/gen_sync.py`` in the copy, so it reaches both pools, as an edit would.

Why a curated list rather than mutmut or cosmic-ray: they mutate every operator
they can reach, and each mutant of this code needs a real PostgreSQL and seconds of
tests; on two cores a full run would take hours and report mostly noise (log
messages, docstrings, counters). These are the mutations that matter: the fork
step, the return and hand-off paths, session reset, lifetimes, redaction and the
policy decisions. The tests run against ``POOLKEEPER_TEST_DSN`` if set, otherwise
against one embedded server started for the whole run.

docs/testing.md gives a whole run's figures and the tests that kill the hardest mutants.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Each run's pytest output, by mutant id (``baseline-N`` for the unmutated runs).
LOGS = ROOT / ".mutants"
PKG = "src/poolkeeper/"
#: What a scratch copy needs: the package, the tests and what they import or run.
COPIED = ["src", "tests", "tools", "examples", "benchmarks", "pyproject.toml"]
GENERATED_FROM = {PKG + "async_pool_base.py": PKG + "pool_base.py"}


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One deliberate bug, and the tests that must catch it."""

    id: str
    path: str
    original: str
    mutated: str
    breaks: str
    #: pytest arguments: paths and ``-k`` expressions, robust to tests moving between files.
    tests: tuple[str, ...]
    timeout: float = 240.0


def _k(expr: str, *paths: str) -> tuple[str, ...]:
    """The tests whose names match ``expr``, wherever they live (tests move between
    files); by default in the ordinary suite, without the process-model tests."""
    where = paths or ("tests", "--ignore=tests/process_models")
    return (*where, "-m", "not fault", "-k", expr)


REDACTION_TESTS = (
    "tests/test_redaction.py",
    "tests/behaviour/test_redaction.py",
    "tests/test_secrets.py",
)

MUTANTS: list[Mutant] = [
    # -- fork safety -------------------------------------------------------------------
    Mutant(
        "fork-neutralise-noop",
        PKG + "forking.py",
        "    if fd < 0:\n        return\n",
        "    if fd < 0 or True:\n        return\n",
        "inherited sockets are left live in a child: its close() ends the parent's session",
        ("tests/test_fork_safety.py",),
    ),
    Mutant(
        "fork-skip-neutralise-call",
        PKG + "pool_core.py",
        "            forking.neutralise_fd(self._driver.fileno(rec.conn))\n",
        "            pass\n",
        "the pool never makes its records' sockets inert in a child",
        ("tests/test_fork_safety.py",),
    ),
    Mutant(
        "fork-pool-stays-open",
        PKG + "pool_core.py",
        "        self._forked = True\n        self._closed = True\n",
        "        self._forked = True\n",
        "a Pool carried into a child is not closed there: getconn() may lend from it",
        _k("fork", "tests/test_pool.py", "tests/test_async_pool.py"),
    ),
    Mutant(
        "fork-orphans-collected",
        PKG + "pool_core.py",
        "        _orphans.extend(records)\n",
        "        pass\n",
        "the child lets the parent's connection objects be garbage-collected: psycopg "
        "warns there about connections the child never opened",
        ("tests/test_fork_safety.py",),
    ),
    Mutant(
        "fork-database-keeps-parent-pool",
        "src/poolkeeper/database.py",
        "        # The pools' own fork hooks make their sockets inert; we just stop using them.\n"
        "        self._pool = None\n",
        "        # The pools' own fork hooks make their sockets inert; we just stop using them.\n",
        "Database() in a child keeps the parent's (closed) pool instead of opening its own",
        _k("fork", "tests/test_database.py", "tests/test_fork_safety.py"),
    ),
    # -- the return path ---------------------------------------------------------------
    Mutant(
        "return-sync-skips-cleaning",
        PKG + "pool.py",
        "            and not self._clean_on_return(rec)\n",
        "            and False\n",
        "Pool.putconn never rolls back or resets: the next borrower inherits the session",
        _k("rolled_back or rolls_back or reset"),
    ),
    Mutant(
        "return-async-skips-cleaning",
        PKG + "async_pool.py",
        "            and not await self._clean_on_return(rec)\n",
        "            and False\n",
        "AsyncPool.putconn never rolls back or resets",
        _k("rolled_back or rolls_back or reset"),
    ),
    Mutant(
        "return-no-rollback",
        PKG + "async_pool_base.py",
        "                self._stats_rollbacks.add()\n"
        "                await self._driver.rollback(conn)\n",
        "                self._stats_rollbacks.add()\n",
        "a connection returned inside a transaction is lent on still inside it",
        _k("rolled_back or rolls_back"),
    ),
    Mutant(
        "return-no-reset",
        PKG + "async_pool_base.py",
        "            if restored and self._needs_reset(conn):\n",
        "            if False:\n",
        "session state (SET, temp tables, LISTEN...) reaches the next borrower",
        _k("reset"),
    ),
    Mutant(
        "return-never-dirty",
        PKG + "pool_core.py",
        "        return bool(self._driver.session_dirty(conn))\n",
        "        return False\n",
        "reset='auto' never sees a dirty session",
        _k("reset"),
    ),
    Mutant(
        "return-sync-check-trusted",
        PKG + "pool.py",
        "            and (return_state(conn) != self._check_state or self._settings_changed(conn))",
        "            and return_state(conn) != self._check_state",
        "Pool.putconn lends a connection flagged for a settings check without comparing "
        "the reported settings: what user code changed reaches the next borrower",
        _k("user_code"),
    ),
    Mutant(
        "return-async-check-trusted",
        PKG + "async_pool.py",
        "            and (return_state(conn) != self._check_state or self._settings_changed(conn))",
        "            and return_state(conn) != self._check_state",
        "AsyncPool.putconn lends a connection flagged for a settings check unexamined",
        _k("user_code"),
    ),
    Mutant(
        "return-broken-kept",
        PKG + "async_pool_base.py",
        "        if status == BROKEN:\n",
        "        if False:\n",
        "a connection returned broken or closed is not discarded",
        _k("closed_is_replaced or broken or closed"),
    ),
    Mutant(
        "return-sync-ignores-drain",
        PKG + "pool.py",
        "        if rec.generation != self._generation or now >= rec.expires_at:\n",
        "        if now >= rec.expires_at:\n",
        "a connection borrowed across drain() or close() goes back into service",
        _k("drain"),
    ),
    Mutant(
        "return-async-ignores-drain",
        PKG + "async_pool.py",
        "        if rec.generation != self._generation or now >= rec.expires_at:\n",
        "        if now >= rec.expires_at:\n",
        "a connection borrowed across drain() goes back into an AsyncPool's service",
        _k("drain"),
    ),
    Mutant(
        "return-retire-leaves-open",
        PKG + "async_pool_base.py",
        "            self._changed.notify_all()\n        self._close_later(rec)\n",
        "            self._changed.notify_all()\n",
        "a retired connection leaves the books but is never closed on the server",
        ("tests/behaviour/test_lifetime.py",),
    ),
    # -- hand-off to waiters -------------------------------------------------------------
    Mutant(
        "handoff-sync-lifo",
        PKG + "pool.py",
        "                    waiter = waiters.popleft()\n                    # Assigned under",
        "                    waiter = waiters.pop()\n                    # Assigned under",
        "Pool hands a returned connection to the newest waiter, not the oldest",
        _k("first_come or waiter"),
    ),
    Mutant(
        "handoff-async-lifo",
        PKG + "async_pool.py",
        "        while waiters:\n            waiter = waiters.popleft()[0]\n"
        "            if not waiter.done():\n                waiter.set_result(rec)\n"
        "                return\n        self._idle.append(rec)",
        "        while waiters:\n            waiter = waiters.pop()[0]\n"
        "            if not waiter.done():\n                waiter.set_result(rec)\n"
        "                return\n        self._idle.append(rec)",
        "AsyncPool hands a returned connection to the newest waiter, not the oldest",
        _k("first_come or waiter"),
    ),
    Mutant(
        "handoff-sync-no-recheck",
        PKG + "pool.py",
        "        # Written the stack, now read the queue: see the module docstring.\n"
        "        if self._waiters:\n            self._serve_after_push()\n",
        "",
        "Pool.putconn does not look for waiters after pushing: a waiter may sleep while "
        "a connection sits idle",
        _k("waiter or threads"),
    ),
    Mutant(
        "handoff-async-to-cancelled",
        PKG + "async_pool.py",
        "            if not waiter.done():\n                waiter.set_result(rec)\n"
        "                return\n        self._idle.append(rec)",
        "            if True:\n                waiter.set_result(rec)\n"
        "                return\n        self._idle.append(rec)",
        "AsyncPool.putconn hands a connection to a waiter that was cancelled: it is lost",
        _k("cancel"),
    ),
    # -- lifetimes -------------------------------------------------------------------------
    Mutant(
        "lifetime-expiry-never",
        PKG + "policy.py",
        "    return now + max_lifetime * (1.0 - LIFETIME_JITTER * draw)\n",
        '    return float("inf")\n',
        "max_lifetime never retires anything",
        ("tests/behaviour/test_lifetime.py", "tests/test_policy_core.py"),
    ),
    Mutant(
        "lifetime-housekeeping-ignores-expiry",
        PKG + "policy.py",
        "        expired = now >= rec.expires_at or rec.generation < generation\n",
        "        expired = rec.generation < generation\n",
        "housekeeping never retires an idle connection past its lifetime",
        ("tests/behaviour/test_lifetime.py", "tests/test_policy.py"),
    ),
    Mutant(
        "lifetime-sync-return-ignores-expiry",
        PKG + "pool.py",
        "        if rec.generation != self._generation or now >= rec.expires_at:\n",
        "        if rec.generation != self._generation:\n",
        "Pool.putconn puts a connection past its lifetime back into service",
        ("tests/behaviour/test_lifetime.py",),
    ),
    Mutant(
        "lifetime-async-return-ignores-expiry",
        PKG + "async_pool.py",
        "        if rec.generation != self._generation or now >= rec.expires_at:\n",
        "        if rec.generation != self._generation:\n",
        "AsyncPool.putconn puts a connection past its lifetime back into service",
        ("tests/behaviour/test_lifetime.py",),
    ),
    Mutant(
        "lifetime-borrow-ignores-expiry",
        PKG + "async_pool_base.py",
        "        if now >= rec.expires_at or rec.generation < self._generation:\n"
        '            self._retire(rec, "reached max_lifetime"',
        "        if rec.generation < self._generation:\n"
        '            self._retire(rec, "reached max_lifetime"',
        "a borrow whose check is due lends a connection past its lifetime",
        ("tests/behaviour/test_lifetime.py",),
    ),
    # -- opening -------------------------------------------------------------------------
    Mutant(
        "configure-failure-leaks",
        PKG + "async_pool_base.py",
        "        except Exception as exc:\n            await self._driver.close(conn)\n"
        "            raise self._configure_failed(exc) from exc\n",
        "        except Exception as exc:\n"
        "            raise self._configure_failed(exc) from exc\n",
        "a connection whose configure= failed is dropped without being closed",
        _k("configure"),
    ),
    Mutant(
        "growth-chain-broken",
        PKG + "async_pool_base.py",
        "            elif self._hand_off_locked(rec):\n                if opened:\n"
        "                    self._grow_locked()\n",
        "            elif self._hand_off_locked(rec):\n                pass\n",
        "a connection opened for waiters does not start the next while callers still wait",
        ("tests/test_parity.py",),
    ),
    # -- policy ----------------------------------------------------------------------------
    Mutant(
        "policy-grow-past-max",
        PKG + "policy.py",
        "    return max(0, min(want, max_size - total))\n",
        "    return max(0, want)\n",
        "the pool opens more connections than max_size",
        ("tests/test_policy_core.py", "tests/test_policy.py"),
    ),
    Mutant(
        "policy-grow-for-every-waiter",
        PKG + "policy.py",
        "    want = max(min_size - total, min(waiting, growth) - opening, 0)\n",
        "    want = max(min_size - total, waiting - opening, 0)\n",
        "a burst of short requests opens a connection for every waiter at once",
        ("tests/test_policy_core.py", "tests/test_parity.py"),
    ),
    Mutant(
        "policy-max-idle-below-min",
        PKG + "policy.py",
        "and now - rec.last_used >= max_idle and remaining > min_size",
        "and now - rec.last_used >= max_idle",
        "max_idle shrinks the pool below min_size",
        ("tests/test_policy.py",),
    ),
    Mutant(
        "policy-backoff-uncapped",
        PKG + "policy.py",
        "        ceiling = min(self.cap, self.initial * (1 << self._attempt))\n",
        "        ceiling = self.initial * (1 << self._attempt)\n",
        "reconnect back-off grows without its cap",
        ("tests/test_policy_core.py", "tests/test_policy.py"),
    ),
    Mutant(
        "policy-breaker-never-opens",
        PKG + "policy.py",
        "            and now - self.failing_since >= self.window\n",
        "            and now - self.failing_since >= self.window * 1000\n",
        "the circuit breaker never opens: callers wait out their timeout on a dead server",
        ("tests/test_policy_core.py", "tests/test_policy.py"),
    ),
    # -- redaction -------------------------------------------------------------------------
    Mutant(
        "redact-known-secrets-kept",
        "src/poolkeeper/redact.py",
        "    text = _mask_spans(text, known)\n",
        "",
        "a known password is no longer masked where it appears verbatim",
        REDACTION_TESTS,
    ),
    Mutant(
        "redact-conninfo-password-kept",
        "src/poolkeeper/redact.py",
        "    return _KV_SECRET.sub(lambda m: f\"{m['head']}{MASK}\", text)\n",
        "    return text\n",
        "password=... in a conninfo string is no longer masked",
        REDACTION_TESTS,
    ),
    Mutant(
        "redact-url-password-kept",
        "src/poolkeeper/redact.py",
        "    text = _URL_TOKEN.sub(_mask_url, text)\n",
        "",
        "the password of a URL (scheme://user:secret@host) is no longer masked",
        REDACTION_TESTS,
    ),
    Mutant(
        "prepared-statement-unjudged",
        PKG + "drivers/psycopg_common.py",
        "        if answer[0] is not _NOT_PREPARED and conn._pk_dirty is not True:\n",
        "        if False:\n",
        "a statement psycopg runs by its prepared name is never judged: after a check "
        "that found nothing, a later borrower's run of it changes the session unseen",
        ("tests/behaviour/test_prepared.py",),
    ),
    Mutant(
        "redact-sslpassword-not-secret",
        "src/poolkeeper/redact.py",
        'SECRET_KEYS = frozenset({"password", "sslpassword"})\n',
        'SECRET_KEYS = frozenset({"password"})\n',
        "sslpassword (the client key's passphrase) is treated as an ordinary setting",
        REDACTION_TESTS,
    ),
    Mutant(
        "redact-registry-unbounded",
        "src/poolkeeper/redact.py",
        "            while len(recent) > self._cap:\n",
        "            while False:\n",
        "a callable DSN minting a token per connect grows the registry without bound",
        REDACTION_TESTS,
    ),
]


def _apply(text: str, mutant: Mutant) -> str:
    count = text.count(mutant.original)
    if count != 1:
        found = "not found" if count == 0 else f"found {count} times"
        raise SystemExit(
            f"mutant {mutant.id!r}: its snippet is {found} in {mutant.path}. The code "
            "changed: update (or remove) this entry in tools/mutants.py so that its "
            "'original' is again one unique piece of that file."
        )
    return text.replace(mutant.original, mutant.mutated)


def check_all(root: Path = ROOT) -> None:
    """Every snippet occurs exactly once, and mutant ids are unique."""
    ids = [m.id for m in MUTANTS]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise SystemExit(f"duplicate mutant ids: {sorted(duplicates)}")
    for mutant in MUTANTS:
        _apply((root / mutant.path).read_text(), mutant)


@contextlib.contextmanager
def scratch_copy() -> Iterator[Path]:
    """A copy of what the tests need, in a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="poolkeeper-mutants-") as tmp:
        copy = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, copy / name, ignore=ignore)
            elif source.exists():
                shutil.copy2(source, copy / name)
        yield copy


@contextlib.contextmanager
def test_server() -> Iterator[str]:
    """``POOLKEEPER_TEST_DSN`` if set; otherwise one embedded server for the whole run."""
    given = os.environ.get("POOLKEEPER_TEST_DSN")
    if given:
        yield given
        return
    from poolkeeper.embedded import LocalServer  # noqa: PLC0415 - only when needed

    server = LocalServer().start()
    try:
        yield server.dsn
    finally:
        server.stop(remove=True)


def run_tests(
    copy: Path, dsn: str, args: tuple[str, ...], timeout: float, log: Path
) -> tuple[str, float]:
    """Run pytest in ``copy`` against its own ``src``; the verdict and the seconds taken.
    What pytest said goes to ``log``."""
    env = dict(os.environ)
    # The copy's package first, ahead of the editable install of the real one.
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), str(copy)])
    env["POOLKEEPER_TEST_DSN"] = dsn
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    start = time.monotonic()
    # A session of its own: on a timeout the whole group (forked children too) is killed.
    proc = subprocess.Popen(
        command,
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        log.write_bytes(out)
        return "killed (timeout)", time.monotonic() - start
    except BaseException:
        # Ctrl-C or SIGTERM: stop the tests (and what they started) with the runner.
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    took = time.monotonic() - start
    log.write_bytes(out)
    if proc.returncode == 0:
        return "SURVIVED", took
    # A test that cannot even be imported proves nothing about the mutant.
    if proc.returncode == 1 and b"ERROR collecting" not in out:
        return "killed", took
    tail = out.decode(errors="replace").strip().splitlines()[-5:]
    return f"ERROR (pytest exit {proc.returncode}: {' / '.join(tail)})", took


def mutate_copy(copy: Path, mutant: Mutant) -> dict[Path, str]:
    """Apply ``mutant`` in ``copy`` (regenerating the sync pool from a mutated async
    source); return what the changed files held before."""
    touched = [copy / mutant.path]
    if mutant.path in GENERATED_FROM:
        touched.append(copy / GENERATED_FROM[mutant.path])
    before = {path: path.read_text() for path in touched}
    touched[0].write_text(_apply(before[touched[0]], mutant))
    if mutant.path in GENERATED_FROM:
        subprocess.run([sys.executable, str(copy / "tools" / "gen_sync.py")], check=True)
    return before


def restore_copy(before: dict[Path, str]) -> None:
    for path, text in before.items():
        path.write_text(text)


Result = tuple[Mutant, str, float]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run just these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="check the snippets and exit")
    parser.add_argument("--report", type=Path, help="also write a Markdown table here")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the tests unmutated first"
    )
    return parser.parse_args(argv)


def _chosen(only: list[str] | None) -> list[Mutant]:
    if not only:
        return MUTANTS
    unknown = set(only) - {m.id for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutant ids: {sorted(unknown)}")
    return [m for m in MUTANTS if m.id in only]


def _baseline(copy: Path, dsn: str, chosen: list[Mutant]) -> bool:
    """Unmutated, each mutant's tests must pass, or "killed" would mean nothing."""
    for n, args in enumerate(dict.fromkeys(m.tests for m in chosen)):
        verdict, took = run_tests(copy, dsn, args, 600.0, LOGS / f"baseline-{n}.log")
        if verdict != "SURVIVED":
            print(f"baseline: {' '.join(args)} fails unmutated ({verdict}); see {LOGS}")
            return False
        print(f"baseline ok ({took:.0f} s): {' '.join(args)}", flush=True)
    return True


def _run_mutants(copy: Path, dsn: str, chosen: list[Mutant]) -> list[Result]:
    results: list[Result] = []
    for mutant in chosen:
        before = mutate_copy(copy, mutant)
        try:
            verdict, took = run_tests(
                copy, dsn, mutant.tests, mutant.timeout, LOGS / f"{mutant.id}.log"
            )
        finally:
            restore_copy(before)
        results.append((mutant, verdict, took))
        print(f"{verdict:>18}  {took:5.0f} s  {mutant.id}", flush=True)
    return results


def _summarise(results: list[Result], minutes: float, report: Path | None) -> int:
    killed = sum(v.startswith("killed") for _, v, _ in results)
    survived = [m for m, v, _ in results if v == "SURVIVED"]
    errors = [m for m, v, _ in results if v.startswith("ERROR")]
    summary = (
        f"{len(results)} mutants: {killed} killed, {len(survived)} survived, "
        f"{len(errors)} errors, in {minutes:.1f} min"
    )
    print(summary)
    for m in survived:
        print(f"  survived: {m.id}: {m.breaks}")
    if report is not None:
        head = ["| mutant | verdict | time | what it breaks |", "| --- | --- | --- | --- |"]
        rows = [f"| `{m.id}` | {v} | {t:.0f} s | {m.breaks} |" for m, v, t in results]
        report.write_text("\n".join([summary, "", *head, *rows]) + "\n")
    return 1 if errors else 0


def main(argv: list[str]) -> int:
    """Run the mutants (or check, or list them); 1 if any run erred, 2 if a baseline failed."""
    options = _parse(argv)
    check_all()
    if options.check:
        print(f"all {len(MUTANTS)} mutants apply")
        return 0
    chosen = _chosen(options.only)
    if options.list:
        for m in chosen:
            print(f"{m.id}\n    {m.path}: {m.breaks}\n    tests: {' '.join(m.tests)}")
        return 0
    # SIGTERM unwinds like Ctrl-C, so the running tests are stopped with the runner.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    LOGS.mkdir(exist_ok=True)
    with test_server() as dsn, scratch_copy() as copy:
        if not options.no_baseline and not _baseline(copy, dsn, chosen):
            return 2
        results = _run_mutants(copy, dsn, chosen)
    return _summarise(results, (time.monotonic() - started) / 60, options.report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
