"""Two architectures through benchmarks/conformance.py: build, one short epoch, every format, verify."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "conformance.py"
spec = importlib.util.spec_from_file_location("conformance", SCRIPT)
conformance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conformance)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conformance.tiny_folder(tmp_path_factory.mktemp("conformance") / "images")


@pytest.mark.parametrize("model", [
    "timm:resnet10t",
    "mnasnet0_5",  # checks its state dict's module versions, which safetensors does not keep
])  # the wider table (efficientnet, regnet, shufflenet, squeezenet, ...) is benchmarks/conformance.py
def test_architecture_exports_and_verifies_in_every_format(model: str, folder: Path, tmp_path: Path):
    args = argparse.Namespace(timeout=600, max_params=150e6)
    row = conformance.run_isolated(model, tmp_path, folder, args)
    assert "error" not in row, row
    assert {fmt: cell["result"] for fmt, cell in row["formats"].items()} == dict.fromkeys(conformance.FORMATS, "pass")
    assert row["size"] == 32 and row["params"] > 100_000


def test_an_architecture_that_builds_at_no_size_is_a_row_with_the_reason(folder: Path, tmp_path: Path):
    row = conformance.run_isolated("no_such_net", tmp_path, folder, argparse.Namespace(timeout=60, max_params=150e6))
    assert row["formats"] == {} and "unknown torchvision classification model 'no_such_net'" in row["error"]
    assert conformance.cell(row, "onnx") == "-" and "no_such_net" in conformance.table([row])
