"""The drift check itself (tests/pool_kinds.py): a one-sided test must stop the run."""

from __future__ import annotations

import pytest

BEHAVIOUR_CONFTEST = """
from tests.behaviour.conftest import kind, pytest_generate_tests
"""

GOOD_BEHAVIOUR = """
import pytest

async def test_everywhere(kind):
    pass

@pytest.mark.per_model("bookkeeping only")
async def test_once_per_pool_class(kind):
    pass

@pytest.mark.differs("async-asyncpg", reason="docs/asyncio.md says asyncpg cannot")
async def test_documented_difference(kind):
    pass
"""

GOOD_MODEL_FILE = """
import pytest

@pytest.mark.one_model("threads", "a thread blocked on a lock")
def test_threads_only():
    pass
"""


@pytest.fixture
def layout(pytester: pytest.Pytester) -> pytest.Pytester:
    """A small project laid out like ours, checked by the real plugin and fixtures."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest('pytest_plugins = ["tests.pool_kinds"]')
    pytester.mkdir("tests")
    pytester.mkdir("tests/behaviour")
    (pytester.path / "tests/behaviour/conftest.py").write_text(BEHAVIOUR_CONFTEST)
    (pytester.path / "tests/behaviour/test_good.py").write_text(GOOD_BEHAVIOUR)
    (pytester.path / "tests/test_pool.py").write_text(GOOD_MODEL_FILE)
    return pytester


def collect(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", *args)


def test_a_suite_that_keeps_the_rules_collects(layout: pytest.Pytester) -> None:
    result = collect(layout)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*test_everywhere?sync-psycopg2?", "*test_threads_only"])


@pytest.mark.parametrize(
    ("source", "complaint"),
    [
        pytest.param(
            "import pytest\n"
            "from tests.behaviour.kinds import ALL_KINDS\n"
            "@pytest.mark.parametrize('kind', ALL_KINDS[:1])\n"
            "async def test_sync_only(kind):\n    pass\n",
            "*test_sync_only: runs over ?'sync-psycopg'?; "
            "missing async-asyncpg, async-psycopg, sync-psycopg2*",
            id="one-pool-only",
        ),
        pytest.param(
            "async def test_no_kind():\n    pass\n",
            "*test_no_kind: not parametrized over the pool kinds*",
            id="no-kind",
        ),
        pytest.param(
            "import pytest\n"
            "@pytest.mark.differs('async-asyncpg', reason='it is different')\n"
            "async def test_undocumented(kind):\n    pass\n",
            "*test_undocumented: differs() needs a reason naming the docs page*",
            id="undocumented-difference",
        ),
        pytest.param(
            "import pytest\n"
            "@pytest.mark.one_model('asyncio', 'only here')\n"
            "async def test_hiding(kind):\n    pass\n",
            "*test_hiding: one_model in the behaviour suite*",
            id="one-model-in-the-suite",
        ),
    ],
)
def test_a_one_sided_behaviour_test_stops_the_run(
    layout: pytest.Pytester, source: str, complaint: str
) -> None:
    (layout.path / "tests/behaviour/test_bad.py").write_text(source)
    result = collect(layout)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*would let Pool and AsyncPool drift apart*", complaint])


@pytest.mark.parametrize(
    ("marker", "complaint"),
    [
        ("", "*test_unmarked: a test here needs @pytest.mark.one_model('threads', reason)*"),
        ("@pytest.mark.one_model('asyncio', 'wrong file')", "*test_unmarked: a test here needs*"),
        ("@pytest.mark.one_model('threads', '  ')", "*test_unmarked: one_model('threads') with*"),
    ],
    ids=["unmarked", "other-model", "no-reason"],
)
def test_a_model_specific_test_must_say_why(
    layout: pytest.Pytester, marker: str, complaint: str
) -> None:
    source = GOOD_MODEL_FILE + f"\n{marker}\ndef test_unmarked():\n    pass\n"
    (layout.path / "tests/test_pool.py").write_text(source)
    result = collect(layout)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([complaint])


def test_naming_single_tests_turns_the_check_off(layout: pytest.Pytester) -> None:
    (layout.path / "tests/behaviour/test_bad.py").write_text(
        "async def test_no_kind():\n    pass\n"
    )
    result = collect(layout, "tests/behaviour/test_good.py::test_everywhere")
    assert result.ret == pytest.ExitCode.OK
