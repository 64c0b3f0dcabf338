"""Every registered network: one short epoch, export and a passing verify; every format for the layer kinds that
matter to the exporters (batch norm and residual blocks in resnet18, dropout), the two core formats and the edge
formats converted from ONNX (LiteRT, NCNN, MNN) for the rest (``benchmarks/conformance.py`` takes every torchvision
architecture through these)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from cnnpipe.formats import BASE_FORMATS
from cnnpipe.nets.registry import net_names
from test_imagefolder import CIFAR_JPEG, _make_folder

from conftest import cnnpipe_json

CLASSES, PER_CLASS = ("airplane", "cat", "ship"), 16
EVERY_FORMAT = {"resnet18", "dropout-cnn"}
CORE_FORMATS = ("onnx", "pt2", "litert", "ncnn", "mnn")  # the edge formats: converted from model.onnx


def _cifar_jpegs(folder: Path) -> bool:
    """The first PER_CLASS training JPEGs of three CIFAR-10 classes from ../shared/datasets, if it is there."""
    if not CIFAR_JPEG.is_file():
        return False
    wanted = {f"cifar10-jpeg/train/{c}/{i:04d}.jpg" for c in CLASSES for i in range(PER_CLASS)}
    with tarfile.open(CIFAR_JPEG) as tar:
        for member in tar:
            if member.name in wanted:
                target = folder / Path(member.name).relative_to("cifar10-jpeg/train")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    return True


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding 'tiny': 3 classes x 16 real CIFAR-10 JPEGs (generated RGB images where they are absent)."""
    base = tmp_path_factory.mktemp("tiny")
    if not _cifar_jpegs(base / "images"):
        _make_folder(base / "images", per_class=PER_CLASS)
    root = base / "store"
    root.mkdir()
    cnnpipe_json(root, "download", "imagefolder", str(base / "images"), "--name", "tiny", "--no-plots")
    return root


@pytest.mark.parametrize("name", net_names())
def test_network_trains_exports_and_verifies(tiny_root: Path, name: str):
    formats = BASE_FORMATS if name in EVERY_FORMAT else CORE_FORMATS
    result = cnnpipe_json(
        tiny_root, "run", "--model", name, "--dataset", "tiny", "--epochs", "1", "--batch-size", "8", "--samples", "9",
        "--optimizer", "adam", "--lr", "1e-3",  # 25 images: the big nets' SGD 0.1 recipe would diverge
        *[a for f in formats for a in ("--format", f)],
    )
    assert result["train"]["ref"] == f"{name}@v1"
    verdict = result["verify"]
    assert verdict["passed"], verdict
    assert [f["format"] for f in verdict["formats"]] == list(formats)
    assert all(f["top1_agreement"] == 1.0 for f in verdict["formats"])
