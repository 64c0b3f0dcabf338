"""Pretrained weights through torchvision's and timm's own loaders and caches (seeded here with generated
files: no network), their preprocessing recorded and used, and one-line errors for what cannot load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_all_networks import _cifar_jpegs
from test_imagefolder import _make_folder

from conftest import assert_clean_error, cnnpipe, cnnpipe_here, cnnpipe_json

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TIMM_REPO, TIMM_COMMIT = "timm/resnet10t.c3_in1k", "0" * 40


@pytest.fixture(scope="module")
def rgb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding 'tiny' (3 classes x 16 real CIFAR-10 JPEGs, or generated RGB images) and empty caches."""
    base = tmp_path_factory.mktemp("pretrained")
    if not _cifar_jpegs(base / "images"):
        _make_folder(base / "images", per_class=16)
    root = base / "store"
    root.mkdir()
    cnnpipe_json(root, "download", "imagefolder", str(base / "images"), "--name", "tiny", "--no-plots")
    return root


def _seed_torchvision(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """torch.hub's cache holding a generated ResNet18_Weights.IMAGENET1K_V1 file (the name torchvision looks for)."""
    import torchvision

    torch.manual_seed(7)
    state = torchvision.models.resnet18().state_dict()
    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, state


def _seed_timm(hf_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The Hugging Face cache holding a generated model.safetensors for timm's resnet10t.c3_in1k."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(8)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}
    repo = hf_home / "hub" / f"models--{TIMM_REPO.replace('/', '--')}"
    (repo / "snapshots" / TIMM_COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(TIMM_COMMIT)
    path = repo / "snapshots" / TIMM_COMMIT / "model.safetensors"
    save_file(state, path)
    return path, state


def test_torchvision_default_weights_start_a_run_with_their_own_normalization(rgb_root: Path, tmp_path: Path):
    path, published = _seed_torchvision(tmp_path / "torch")
    released = cnnpipe_json(
        rgb_root, "run", "--model", "torchvision:resnet18", "--pretrained", "--freeze-backbone", "--dataset", "tiny",
        "--epochs", "1", "--batch-size", "8", "--samples", "9", "--format", "onnx", env={"TORCH_HOME": str(tmp_path / "torch")},
    )
    assert released["verify"]["passed"], released["verify"]
    assert "ResNet18_Weights.IMAGENET1K_V1" in released["train"]["fine_tune"]
    version = rgb_root / "models" / "resnet18" / "v1"
    desc = json.loads((version / "model.json").read_text())
    assert desc["weights"]["name"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert desc["weights"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert desc["input"]["mean"] == IMAGENET_MEAN and desc["input"]["std"] == IMAGENET_STD  # the weights', not tiny's
    trained = load_file(version / "weights.safetensors")
    assert torch.equal(trained["layer1.0.conv1.weight"], published["layer1.0.conv1.weight"])  # loaded, then frozen
    assert trained["fc.weight"].shape == (3, 512)  # the head: re-initialised for tiny's three classes
    card = (rgb_root / "exports" / "resnet18" / "v1" / "README.md").read_text()
    assert "ResNet18_Weights.IMAGENET1K_V1" in card and desc["weights"]["sha256"] in card


def test_a_timm_tag_loads_from_the_hugging_face_cache_and_fits_one_channel(rgb_root: Path, tmp_path: Path):
    _, published = _seed_timm(tmp_path / "hf")
    cnnpipe_json(rgb_root, "download", "--no-plots")  # mnist-sample: one channel
    trained = cnnpipe_json(
        rgb_root, "train", "--model", "timm:resnet10t", "--weights", "resnet10t.c3_in1k", "--freeze-backbone",
        "--dataset", "mnist-sample", "--epochs", "1", "--name", "gray",
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert "resnet10t.c3_in1k" in trained["fine_tune"] and "--size 176" in trained["fine_tune"]
    version = Path(trained["path"])
    desc = json.loads((version / "model.json").read_text())
    assert desc["weights"]["library"] == "timm" and desc["weights"]["file"] == "model.safetensors"
    assert desc["input"]["mean"] == pytest.approx([sum(IMAGENET_MEAN) / 3])  # RGB averaged for one channel
    weights = load_file(version / "weights.safetensors")
    first = published["conv1.0.weight"]
    assert torch.allclose(weights["conv1.0.weight"], first.sum(dim=1, keepdim=True))  # timm's adapt_input_conv
    assert torch.equal(weights["layer1.0.conv2.weight"], published["layer1.0.conv2.weight"])


def test_weights_missing_from_an_empty_cache_are_one_line_naming_the_file_and_where_to_put_it(rgb_root: Path,
                                                                                             tmp_path: Path):
    empty = tmp_path / "empty"
    proc = cnnpipe_here(rgb_root, "train", "--model", "torchvision:resnet18", "--pretrained", "--dataset", "tiny",
                        "--name", "offline", env={"TORCH_HOME": str(empty)})
    assert_clean_error(proc, 2, "resnet18-f37072fd.pth", str(empty / "hub" / "checkpoints"))
    # huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported: a process of its own
    proc = cnnpipe(rgb_root, "train", "--model", "timm:resnet10t", "--pretrained", "--dataset", "tiny",
                   "--name", "offline", env={"HF_HOME": str(empty), "HF_HUB_OFFLINE": "1"})
    assert_clean_error(proc, 2, "model.safetensors", TIMM_REPO, "HF_HOME")
    assert not (rgb_root / "models" / "offline").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (("--model", "lenet5", "--pretrained"), "take torchvision:NAME or timm:NAME"),
    (("--model", "torchvision:resnet18", "--weights", "IMAGENET9K"), "use one of IMAGENET1K_V1"),
    (("--model", "torchvision:resnet18", "--pretrained", "--init-from", "x.safetensors"), "use one"),
    (("--model", "torchvision:resnet18", "--dataset-stats"), "add --pretrained"),
    (("--model", "torchvision:resnet18", "--weights", ""), "--weights must name the weights"),
])
def test_pretrained_usage_errors_are_one_line(rgb_root: Path, args: tuple[str, ...], needle: str):
    assert_clean_error(cnnpipe_here(rgb_root, "train", *args, "--dataset", "tiny"), 2, needle)


def test_fine_tuning_errors_give_both_head_shapes_and_the_fix_and_name_a_missing_file(rgb_root: Path, tmp_path: Path):
    path, _ = _seed_torchvision(tmp_path / "torch")
    proc = cnnpipe_here(rgb_root, "train", "--model", "torchvision:resnet18", "--dataset", "tiny", "--init-from", str(path))
    assert_clean_error(proc, 2, "fc.weight is [1000, 512] in the file and [3, 512] here: add --reset-head")
    proc = cnnpipe_here(rgb_root, "train", "--dataset", "tiny", "--init-from", "missing.safetensors")
    assert_clean_error(proc, 2, "--init-from missing.safetensors: no such file")
