"""Every registered network: one short epoch, every export format, and a passing verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnpipe.formats import BASE_FORMATS
from cnnpipe.nets import net_names
from test_imagefolder import _make_folder

from conftest import cnnpipe_json


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding 'tiny': 3 classes x 16 generated RGB images at 32x32."""
    base = tmp_path_factory.mktemp("tiny")
    _make_folder(base / "images", per_class=16)
    root = base / "store"
    root.mkdir()
    cnnpipe_json(root, "download", "imagefolder", str(base / "images"), "--name", "tiny", "--no-plots")
    return root


@pytest.mark.parametrize("name", net_names())
def test_network_trains_exports_and_verifies(tiny_root: Path, name: str):
    result = cnnpipe_json(
        tiny_root, "run", "--model", name, "--dataset", "tiny", "--epochs", "1", "--batch-size", "8", "--samples", "9",
        "--optimizer", "adam", "--lr", "1e-3",  # 25 images: the big nets' SGD 0.1 recipe would diverge
    )
    assert result["train"]["ref"] == f"{name}@v1"
    verdict = result["verify"]
    assert verdict["passed"], verdict
    assert [f["format"] for f in verdict["formats"]] == list(BASE_FORMATS)  # openvino, executorch, ort included
    assert all(f["top1_agreement"] == 1.0 for f in verdict["formats"])
