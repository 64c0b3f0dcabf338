"""The tree is clean under ruff, every subpackage ships in the wheel, README and pyproject agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_tree_is_clean_under_ruff():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_subpackage_and_the_shipped_dataset_are_in_the_wheel(tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("cnnpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in (REPO / "pipeline").rglob("__init__.py"):
        rel = init.relative_to(REPO / "pipeline")
        assert f"cnnpipe/{rel.as_posix()}" in names, f"{rel.parent} would not ship"
    modules = {p.relative_to(REPO / "pipeline").as_posix() for p in (REPO / "pipeline").rglob("*.py")}
    assert {f"cnnpipe/{m}" for m in modules} <= names
    assert {"cnnpipe/data/mnist-sample/t10k-images-idx3-ubyte.gz", "cnnpipe/data/mnist-sample/t10k-labels-idx1-ubyte.gz"} <= names


def test_readme_states_the_python_version_pyproject_requires():
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.startswith(">=")
    assert f"Python {requires[2:]} or newer" in (REPO / "README.md").read_text()
