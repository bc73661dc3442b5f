"""The sync pool's shared methods are generated from the async source: never edited by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_sync", ROOT / "tools" / "gen_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_sync"] = module
    spec.loader.exec_module(module)
    return module


def test_pool_base_is_what_the_generator_writes() -> None:
    gen = _generator()
    expected = gen.generate()
    if gen.TARGET.read_text() != expected:
        pytest.fail(
            "src/poolkeeper/pool_base.py differs from what tools/gen_sync.py writes from "
            "async_pool_base.py: edit the async source, then run `make generate`"
        )


def test_a_hand_edit_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _generator()
    copy = tmp_path / "pool_base.py"
    copy.write_text(gen.TARGET.read_text().replace("drained", "drained by hand", 1))
    monkeypatch.setattr(gen, "TARGET", copy)
    assert gen.main(["--check"]) == 1
    gen.main([])
    assert gen.main(["--check"]) == 0


def test_the_rewrite_drops_async_and_keeps_strings() -> None:
    source = (
        "async def f(x: Awaitable[int]) -> AsyncIterator[int]:\n"
        '    """await me"""\n'
        "    async with a as b:\n"
        "        yield await g(b)  # await stays in comments\n"
    )
    assert _generator().unasync(source) == (
        "def f(x: int) -> Iterator[int]:\n"
        '    """await me"""\n'
        "    with a as b:\n"
        "        yield g(b)  # await stays in comments\n"
    )
