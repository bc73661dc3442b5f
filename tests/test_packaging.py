"""The package as built: one version, the licence shipped, no benchmark results in the sdist."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import poolkeeper

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_written_once() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=", pyproject, re.M)
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M)
    assert importlib.metadata.version("poolkeeper") == poolkeeper.__version__


def test_metadata_names_every_supported_python_and_the_licence() -> None:
    meta = importlib.metadata.metadata("poolkeeper")
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = set(meta.get_all("Classifier") or [])
    for minor in range(10, 15):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Framework :: AsyncIO" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    # PEP 639: the SPDX expression replaces the licence classifiers.
    assert meta["License-Expression"] == "MIT"
    assert not any(c.startswith("License ::") for c in classifiers)


def test_sdist_ships_the_licence_and_no_benchmark_results(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    (sdist,) = tmp_path.glob("poolkeeper-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", "README.md"} <= names
    assert "benchmarks/run.py" in names
    assert not [n for n in names if n.startswith("benchmarks/results")]
