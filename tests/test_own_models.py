"""The user's own networks: their file, a module, torchvision and timm; code runs only when trusted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, card_snippets_answer, cnnpipe, cnnpipe_here, cnnpipe_json, resign, tree_state

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


class Branchy(nn.Module):
    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x):
        if x.mean() > 0:  # data-dependent control flow: torch.export cannot capture it
            x = x * 2
        return self.fc(x.flatten(1))
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
    assert_clean_error(cnnpipe_here(own_root, "verify", "mynet", "--samples", "8"), 2, "pass --trust-code")
    assert_clean_error(cnnpipe_here(own_root, "evaluate", "mynet"), 2, "pass --trust-code")
    assert cnnpipe_json(own_root, "verify", "mynet", "--samples", "8", "--trust-code")["passed"]
    png = own_root / "digit.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.load(own_root / "data/mnist-sample/v1/splits/test-images.npy")[0, 0]).save(png)
    predicted = cnnpipe_json(own_root, "predict", str(png), "--bundle", "mynet")  # ONNX: no code needed
    answers = card_snippets_answer(own_root / "exports/mynet/v1", png, own_root / "mynet-snippets")
    assert set(answers) == {predicted["predictions"][0]["top"][0]["class"]}  # safetensors: the bundle's code/mynet.py

    # a changed copy of the code is refused even with a re-signed manifest
    version = own_root / "exports/mynet/v1"
    (version / "code/mynet.py").write_text(MYNET + "\nimport os\n")
    resign(version, "code/mynet.py")
    proc = cnnpipe(own_root, "verify", "mynet", "--samples", "8", "--trust-code", "--json")
    (row,) = [r for r in json.loads(proc.stdout)["formats"] if r["format"] == "safetensors"]
    assert proc.returncode == 1 and "changed since it was recorded" in row["reasons"][0]


def test_a_torchvision_architecture_on_one_channel_input(own_root: Path):
    result = cnnpipe_json(own_root, "run", "--model", "torchvision:mobilenet_v3_small", "--epochs", "1",
                          "--format", "onnx", "--format", "safetensors", "--samples", "16", "--batch-sizes", "1,3")
    assert result["verify"]["passed"]
    source = json.loads((own_root / "models/mobilenet_v3_small/v1/model.json").read_text())["source"]
    assert source["kind"] == "torchvision" and source["distribution"].startswith("torchvision ")
    png = own_root / "mobile-digit.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.load(own_root / "data/mnist-sample/v1/splits/test-images.npy")[1, 0]).save(png)
    predicted = cnnpipe_json(own_root, "predict", str(png), "--bundle", "mobilenet_v3_small")
    assert predicted["images"] == 1 and predicted["bundle"] == "mobilenet_v3_small@v1"
    # the card's snippets, torchvision's builder with the one-channel first convolution written out, agree
    answers = card_snippets_answer(own_root / "exports/mobilenet_v3_small/v1", png, own_root / "mobile-snippets")
    assert answers == [predicted["predictions"][0]["top"][0]["class"]] * 2
    # timm models go through every format in test_conformance


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
    assert_clean_error(cnnpipe_here(own_root, "train", "--model", model, "--epochs", "1"), 2, message)
    after = tree_state(own_root / "models") if (own_root / "models").exists() else {}
    assert after == before


def test_a_module_factory_is_recorded_with_its_file_hash_and_runs_again_only_trusted_and_unchanged(own_root: Path):
    proc = cnnpipe(own_root, "train", "--model", "mynet:build_net", "--epochs", "1", "--name", "frommodule", "--json")
    assert proc.returncode == 0, proc.stderr
    source = json.loads((own_root / "models/frommodule/v1/model.json").read_text())["source"]
    assert source["kind"] == "module" and source["name"] == "mynet" and len(source["sha256"]) == 64
    # a subprocess, as the user runs it: its working folder is on the module path (``python -m``)
    assert_clean_error(cnnpipe(own_root, "export", "frommodule", "--format", "onnx"), 2,
                       "the module 'mynet'", "pass --trust-code")
    assert cnnpipe(own_root, "export", "frommodule", "--format", "onnx", "--trust-code").returncode == 0

    # an attacker's mynet.py in the working directory: refused by its sha256 before it is imported
    marker, original = own_root / "module-code-ran", (own_root / "mynet.py").read_text()
    (own_root / "mynet.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + original)
    try:
        assert_clean_error(cnnpipe(own_root, "verify", "frommodule", "--samples", "8", "--trust-code"), 2,
                           "mynet.py: the model's code changed since it was recorded")
    finally:
        (own_root / "mynet.py").write_text(original)
    assert not marker.exists()


def test_a_code_file_named_outside_the_versions_code_folder_is_refused_unrun(own_root: Path):
    assert cnnpipe(own_root, "train", "--model", "mynet.py:build_net", "--epochs", "1", "--name", "escape").returncode == 0
    version, marker = own_root / "models/escape/v1", own_root / "escaped-code-ran"
    evil = f"open({str(marker)!r}, 'w').close()\n" + MYNET
    (version.parent / "evil.py").write_text(evil)
    desc = json.loads((version / "model.json").read_text())
    desc["source"] |= {"file": "../evil.py", "sha256": hashlib.sha256(evil.encode()).hexdigest()}
    (version / "model.json").write_text(json.dumps(desc))
    resign(version, "model.json")
    assert_clean_error(cnnpipe_here(own_root, "evaluate", "escape", "--trust-code"), 2,
                       "names the code '../evil.py', not a file of its code/ folder")
    assert not marker.exists()


BOMB = """
import os
from torch import nn


def build(num_classes, in_channels, image_size):
    if os.path.exists(%r):
        os.abort()
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))
"""


def test_a_factory_that_aborts_during_verify_ends_only_its_worker(own_root: Path, tmp_path: Path):
    trigger = tmp_path / "abort-now"
    (own_root / "bomb.py").write_text(BOMB % str(trigger))
    assert cnnpipe(own_root, "train", "--model", "bomb.py:build", "--epochs", "1").returncode == 0
    assert cnnpipe(own_root, "export", "bomb", "--format", "onnx", "--trust-code").returncode == 0
    trigger.touch()
    proc = cnnpipe(own_root, "verify", "bomb", "--samples", "8", "--trust-code")
    assert_clean_error(proc, 2, "reference network: its worker ended without an answer (killed by SIGABRT)")


PLAIN_TRAINING = """
import json, sys
import numpy as np, torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from mynet import build_net

root = sys.argv[1]
info = json.load(open(f"{root}/data/mnist-sample/v1/dataset.json"))
def batches(split):
    x = torch.from_numpy(np.load(f"{root}/data/mnist-sample/v1/splits/{split}-images.npy")).float() / 255
    y = torch.from_numpy(np.load(f"{root}/data/mnist-sample/v1/splits/{split}-labels.npy"))
    return (x - info["mean"][0]) / info["std"][0], y
torch.manual_seed(0)
net = build_net(10, 1)
x, y = batches("train")
opt = torch.optim.Adam(net.parameters(), 3e-3)
for epoch in range(3):
    for i in range(0, len(y), 64):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
        opt.step()
torch.save({"model": {"_orig_mod." + k: v for k, v in net.state_dict().items()}}, f"{root}/plain.pt")
xt, yt = batches("test")
with torch.no_grad():
    pred = net.eval()(xt).argmax(1)
print(json.dumps({"accuracy": float((pred == yt).float().mean()), "predicted": pred.tolist()}))
"""


def test_weights_trained_by_plain_pytorch_import_and_evaluate_to_the_image(own_root: Path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", PLAIN_TRAINING, str(own_root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    plain = json.loads(proc.stdout)
    imported = cnnpipe_json(own_root, "import", "plain.pt", "--model", "mynet.py:build_net", "--dataset", "mnist-sample",
                            "--name", "plain")
    assert imported["ref"] == "plain@v1"
    evaluated = cnnpipe_json(own_root, "evaluate", "plain", "--trust-code")
    assert evaluated["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-6) and plain["accuracy"] > 0.3
    confusion = [[0] * 10 for _ in range(10)]
    labels = __import__("numpy").load(own_root / "data/mnist-sample/v1/splits/test-labels.npy")
    for t, p in zip(labels.tolist(), plain["predicted"]):
        confusion[t][p] += 1
    assert evaluated["confusion"] == confusion  # the same prediction for every image

    # the release job on imported weights: no training, the same accuracy, exports that verify
    assert_clean_error(cnnpipe_here(own_root, "run", "--skip-train", "--name", "plain"), 2, "pass --trust-code")
    released = cnnpipe_json(own_root, "run", "--skip-train", "--name", "plain", "--trust-code", "--format", "onnx",
                            "--format", "safetensors", "--samples", "16", "--batch-sizes", "1,3")
    assert "train" not in released and released["evaluate"]["model"] == "plain@v1"
    assert released["evaluate"]["accuracy"] == evaluated["accuracy"] and released["verify"]["passed"]
    assert sorted(p.name for p in (own_root / "models/plain").iterdir() if p.name.startswith("v")) == ["v1"]
    assert_clean_error(cnnpipe_here(own_root, "run", "--skip-train", "--name", "nobody"), 2, "no model 'nobody'")

    before = tree_state(own_root / "models")
    assert_clean_error(cnnpipe_here(own_root, "import", "plain.pt", "--model", "lenet5", "--dataset", "mnist-sample"), 2,
                       "weights do not fit the architecture", "missing ['")
    (own_root / "code.pt").write_bytes(__import__("pickle").dumps(RunsCode()))
    assert_clean_error(cnnpipe_here(own_root, "import", "code.pt", "--model", "mynet.py:build_net", "--dataset", "mnist-sample"),
                       2, "not a weights-only PyTorch checkpoint")
    assert_clean_error(cnnpipe_here(own_root, "import", "gone.pt", "--model", "lenet5", "--dataset", "mnist-sample"), 2,
                       "no such weights file")
    assert tree_state(own_root / "models") == before


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


def test_fine_tuning_starts_from_a_version_and_trains_only_the_head(own_root: Path):
    from safetensors.torch import load_file

    cnnpipe_json(own_root, "train", "--epochs", "1", "--name", "base")
    tuned = cnnpipe_json(own_root, "train", "--epochs", "1", "--name", "tuned", "--init-from", "base", "--reset-head",
                         "--freeze-backbone", "--lr", "0.01")
    assert "head 'classifier.4' re-initialised" in tuned["fine_tune"] and "only 'classifier.4' trains" in tuned["fine_tune"]
    base = load_file(own_root / "models/base/v1/weights.safetensors")
    after = load_file(own_root / "models/tuned/v1/weights.safetensors")
    for key, value in base.items():
        same = bool((after[key] == value).all())
        assert same != key.startswith("classifier.4."), key  # the backbone is untouched, the head is not
    assert_clean_error(cnnpipe_here(own_root, "train", "--reset-head"), 2, "add --init-from")


def test_download_size_lets_a_network_made_for_larger_inputs_train(tmp_path: Path):
    assert_clean_error(cnnpipe_here(tmp_path, "models", "--model", "torchvision:alexnet", "-d", "mnist-sample"), 2,
                       "cannot take the dataset's 1x28x28 input", "torchvision lists 63x63", "--size")
    assert_clean_error(cnnpipe_here(tmp_path, "download", "--size", "4"), 2, "--size must be between 8 and 512")
    assert_clean_error(cnnpipe_here(tmp_path, "download", "--size", "513"), 2, "--size must be between 8 and 512")
    assert not (tmp_path / "data").exists()

    import numpy as np

    native = cnnpipe_json(tmp_path, "download", "--no-plots")
    resized = cnnpipe_json(tmp_path, "download", "--size", "64", "--no-plots")
    assert (native["ref"], resized["ref"]) == ("mnist-sample@v1", "mnist-sample@v2") and not resized["reused"]
    assert cnnpipe_json(tmp_path, "download", "--size", "64")["reused"]
    info = json.loads((tmp_path / "data/mnist-sample/v2/dataset.json").read_text())
    assert (info["height"], info["width"], info["resized"]["from"]) == (64, 64, 28)
    small = np.load(tmp_path / "data/mnist-sample/v1/splits/test-images.npy")
    large = np.load(tmp_path / "data/mnist-sample/v2/splits/test-images.npy")
    assert large.shape == (2000, 1, 64, 64) and small.shape == (2000, 1, 28, 28)
    assert abs(float(large.mean()) - float(small.mean())) < 2  # the same digits, scaled
    assert resized["mean"][0] == pytest.approx(native["mean"][0], abs=0.01)

    row = cnnpipe_json(tmp_path, "models", "--model", "torchvision:alexnet", "-d", "mnist-sample")[0]
    assert row["input"] == "1x64x64, 10 classes" and row["params"] > 50_000_000 and row["source"].startswith("torchvision ")
    assert_clean_error(cnnpipe_here(tmp_path, "run", "--dataset", "mnist-sample@v1", "--size", "64"), 2,
                       "--size resizes a standard dataset on download")
    assert cnnpipe_json(tmp_path, "train", "--epochs", "1")["ref"] == "lenet5@v1"  # trains on the newest, 64 px
    model = json.loads((tmp_path / "models/lenet5/v1/model.json").read_text())
    manifest = json.loads((tmp_path / "models/lenet5/v1/manifest.json").read_text())
    assert (model["input"]["height"], model["input"]["width"]) == (64, 64)
    assert manifest["lineage"]["parents"][0]["ref"] == "mnist-sample@v2"


def test_a_network_the_exporter_cannot_take_is_one_line_naming_the_format(own_root: Path):
    assert cnnpipe_json(own_root, "train", "--model", "mynet.py:Branchy", "--epochs", "1", "--name", "branchy")["ref"]
    before = tree_state(own_root / "exports") if (own_root / "exports").exists() else {}
    for fmt in ("pt2", "openvino"):
        proc = cnnpipe(own_root, "export", "branchy", "--format", fmt, "--trust-code")
        assert_clean_error(proc, 2, f"{fmt} export failed: ", "data-dependent")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (tree_state(own_root / "exports") if (own_root / "exports").exists() else {}) == before


def test_timm_networks_are_built_at_the_datasets_size_or_say_the_smallest_they_take(own_root: Path):
    """A ViT gets timm's img_size (28 px digits, not 224); a network that cannot take 28 px names the smallest
    size it takes, found by building it (timm's configs seldom list one)."""
    row = cnnpipe_json(own_root, "models", "--model", "timm:deit_tiny_patch16_224", "-d", "mnist-sample")[0]
    assert "1x28x28" in json.dumps(row)
    proc = cnnpipe_here(own_root, "models", "--model", "timm:levit_128s", "-d", "mnist-sample")
    assert_clean_error(proc, 2, "the smallest of the sizes tried that it takes is 32x32", "--size 32")


CACHED = """import torch
from torch import nn


class Cached(nn.Module):
    # caches a tensor on its first eval forward, as timm's LeViT caches its attention biases

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)
        self.bias = nn.Parameter(torch.zeros(4))
        self.cache = {}

    def forward(self, x):
        if self.training or torch.jit.is_tracing():
            b = self.bias * 2.0
        else:
            if "b" not in self.cache:
                self.cache["b"] = self.bias * 2.0
            b = self.cache["b"]
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)) + b)
"""


def test_a_module_that_caches_on_its_first_eval_forward_verifies(own_root: Path):
    """verify's reference worker runs the network before it re-exports it; the re-export must start from the
    weights as export saw them (it once compared against a graph with the cache baked in: 'differs')."""
    (own_root / "cached.py").write_text(CACHED)
    result = cnnpipe_json(own_root, "run", "--model", "cached.py:Cached", "--epochs", "1", "--samples", "16",
                          "--format", "onnx", "--format", "pt2")
    assert result["verify"]["passed"], result["verify"]["reexport"]
    assert result["verify"]["reexport"] == {"onnx": [], "pt2": []}
