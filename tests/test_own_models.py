"""The user's own networks: their file, a module, torchvision and timm; code runs only when trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, cnnpipe, cnnpipe_json, resign, tree_state

MYNET = """
from torch import nn


def build_net(num_classes, in_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


def raises():
    raise RuntimeError("no GPU here")


def not_a_module(num_classes):
    return [num_classes]


def wrong_output(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes + 1))
"""


@pytest.fixture(scope="module")
def own_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own")
    (root / "mynet.py").write_text(MYNET)
    assert cnnpipe(root, "download", "--no-plots").returncode == 0
    return root


def test_a_users_file_trains_exports_verifies_and_predicts(own_root: Path):
    result = cnnpipe_json(own_root, "run", "--model", "mynet.py:build_net", "--epochs", "1", "--samples", "32",
                          "--batch-sizes", "1,5")
    assert result["train"]["ref"] == "mynet@v1" and result["verify"]["passed"]
    desc = json.loads((own_root / "models/mynet/v1/model.json").read_text())
    assert desc["source"]["kind"] == "file" and desc["source"]["factory"] == "build_net"
    assert (own_root / "models/mynet/v1/code/mynet.py").read_text() == MYNET
    assert (own_root / "exports/mynet/v1/code/mynet.py").read_text() == MYNET  # the bundle carries its code

    # stored code runs again only when the user says so
    assert_clean_error(cnnpipe(own_root, "verify", "mynet", "--samples", "8"), 2, "pass --trust-code")
    assert_clean_error(cnnpipe(own_root, "evaluate", "mynet"), 2, "pass --trust-code")
    assert cnnpipe_json(own_root, "verify", "mynet", "--samples", "8", "--trust-code")["passed"]
    png = own_root / "digit.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.load(own_root / "data/mnist-sample/v1/splits/test-images.npy")[0, 0]).save(png)
    assert cnnpipe_json(own_root, "predict", str(png), "--bundle", "mynet")["images"] == 1  # ONNX: no code needed

    # a changed copy of the code is refused even with a re-signed manifest
    version = own_root / "exports/mynet/v1"
    (version / "code/mynet.py").write_text(MYNET + "\nimport os\n")
    resign(version, "code/mynet.py")
    proc = cnnpipe(own_root, "verify", "mynet", "--samples", "8", "--trust-code", "--json")
    (row,) = [r for r in json.loads(proc.stdout)["formats"] if r["format"] == "safetensors"]
    assert proc.returncode == 1 and "changed since it was recorded" in row["reasons"][0]


def test_torchvision_and_timm_architectures_on_one_channel_input(own_root: Path):
    result = cnnpipe_json(own_root, "run", "--model", "torchvision:mobilenet_v3_small", "--epochs", "1",
                          "--format", "onnx", "--format", "safetensors", "--samples", "16", "--batch-sizes", "1,3")
    assert result["verify"]["passed"]
    source = json.loads((own_root / "models/mobilenet_v3_small/v1/model.json").read_text())["source"]
    assert source["kind"] == "torchvision" and source["distribution"].startswith("torchvision ")
    trained = cnnpipe_json(own_root, "train", "--model", "timm:resnet10t", "--epochs", "1", "--batch-size", "128")
    assert trained["ref"] == "resnet10t@v1"
    assert cnnpipe_json(own_root, "export", "resnet10t", "--format", "onnx")["formats"] == ["onnx"]


@pytest.mark.parametrize(("model", "message"), [
    ("missing.py:build_net", "no such file missing.py"),
    ("mynet.py:absent", "has no factory function 'absent'"),
    ("mynet.py:raises", "the factory raised RuntimeError: no GPU here"),
    ("mynet.py:not_a_module", "returned list, not a torch.nn.Module"),
    ("mynet.py:wrong_output", "returns [2, 11] for a batch of 2, not [2, 10] logits"),
    ("torchvision:resnet19", "did you mean resnet18"),
    ("timm:resnet9000x", "unknown timm model 'resnet9000x'"),
    ("no_such_package.mod:build", "cannot import module 'no_such_package.mod'"),
])
def test_bad_user_models_are_one_line_and_write_nothing(own_root: Path, model: str, message: str):
    before = tree_state(own_root / "models") if (own_root / "models").exists() else {}
    assert_clean_error(cnnpipe(own_root, "train", "--model", model, "--epochs", "1"), 2, message)
    after = tree_state(own_root / "models") if (own_root / "models").exists() else {}
    assert after == before


def test_a_module_factory_is_recorded_with_its_file_hash(own_root: Path):
    proc = cnnpipe(own_root, "train", "--model", "mynet:build_net", "--epochs", "1", "--name", "frommodule", "--json")
    assert proc.returncode == 0, proc.stderr
    source = json.loads((own_root / "models/frommodule/v1/model.json").read_text())["source"]
    assert source["kind"] == "module" and source["name"] == "mynet" and len(source["sha256"]) == 64
