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


# -- every other test that uses a pool ----------------------------------------------------

HELPERS = """
from poolkeeper import Pool


def sync_pool():
    return Pool("postgresql://u@localhost/db", open=False)
"""

FIXTURES = """
import pytest

from poolkeeper import AsyncPool


@pytest.fixture
def async_pool():
    return AsyncPool("postgresql://u@localhost/db", open=False)
"""


@pytest.fixture
def suite(layout: pytest.Pytester) -> pytest.Pytester:
    """The layout above, plus a helper module and a conftest fixture that make pools."""
    (layout.path / "tests/pk_helpers.py").write_text(HELPERS)
    (layout.path / "tests/conftest.py").write_text(FIXTURES)
    return layout


ONE_SIDED = """
import pytest

import poolkeeper
from poolkeeper import Pool
from pk_helpers import sync_pool


def test_sync():
    Pool("postgresql://u@localhost/db", open=False)


def test_dotted():
    poolkeeper.Database("x", dsn="")


def test_local_import():
    from poolkeeper import AsyncDatabase

    AsyncDatabase("x", dsn="")


def test_helper():
    sync_pool()


def test_fixture(async_pool):
    pass


@pytest.mark.one_model("asyncio", "wrong model")
def test_mislabelled():
    sync_pool()


@pytest.mark.one_model("threads", twin="tests/test_uses.py::test_gone")
def test_orphan():
    sync_pool()


@pytest.mark.one_model("threads", twin="tests/test_uses.py::test_async_half")
def test_sync_half():
    sync_pool()


@pytest.mark.one_model("asyncio", "an asyncio-only thing")
def test_async_half(async_pool):
    pass
"""


def test_a_test_that_uses_one_pool_must_say_why(suite: pytest.Pytester) -> None:
    (suite.path / "tests/test_uses.py").write_text(ONE_SIDED)
    result = collect(suite)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(
        [
            "*test_sync: uses Pool/Database only; write it once in tests/behaviour/*",
            "*test_dotted: uses Pool/Database only*",
            "*test_local_import: uses AsyncPool/AsyncDatabase only*",
            "*test_helper: uses Pool/Database only*",
            "*test_fixture: uses AsyncPool/AsyncDatabase only*",
            "*test_mislabelled: marked one_model('asyncio') but uses Pool/Database only",
            "*test_orphan: its twin tests/test_uses.py::test_gone does not exist*",
            "*test_sync_half: its twin tests/test_uses.py::test_async_half must be marked*",
        ]
    )
    assert "test_uses.py::test_async_half:" not in result.stderr.str()


GOOD_USES = """
import pytest

from poolkeeper import AsyncPool, Database, Pool
from pk_helpers import sync_pool


def test_both_classes():
    Pool("postgresql://u@localhost/db", open=False)
    AsyncPool("postgresql://u@localhost/db", open=False)


@pytest.mark.parametrize("cls", [Pool, AsyncPool])
def test_parametrized_over_both(cls):
    cls("postgresql://u@localhost/db", open=False)


def test_helper_and_fixture(async_pool):
    sync_pool()


@pytest.mark.one_model("threads", "an OS thread blocked in getconn")
def test_model_specific():
    Pool("postgresql://u@localhost/db", open=False)


def test_a_method_of_the_class_is_not_a_pool():
    Database.reset_all()


@pytest.mark.one_model("threads", twin="tests/test_uses.py::test_async_twin")
def test_sync_twin():
    sync_pool()


@pytest.mark.one_model("asyncio", twin="tests/test_uses.py::test_sync_twin")
def test_async_twin(async_pool):
    pass
"""


def test_tests_that_use_both_pools_or_say_why_collect(suite: pytest.Pytester) -> None:
    (suite.path / "tests/test_uses.py").write_text(GOOD_USES)
    result = collect(suite)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*test_async_twin"])
