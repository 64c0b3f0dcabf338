"""LiteRT, NCNN and MNN: in the offline bundle, verified at every batch size; refusals in one line; and the
verification kit, checked by its torch-free check.py here and in fresh environments with one runtime each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from safetensors.numpy import load_file

from cnnpipe.errors import ExportFailed
from cnnpipe.formats.litert import embedded_meta
from cnnpipe.formats.tflite_graph import translate

from conftest import assert_clean_error, cnnpipe, cnnpipe_here, cnnpipe_json, tree_state

EDGE = ("litert", "ncnn", "mnn")
# each runtime a kit checks, the distribution a fresh environment installs for it, and the kit's formats it runs
RUNTIMES = {"onnxruntime": ("onnxruntime", {"onnx", "ort"}), "litert": ("ai-edge-litert", {"litert"}),
            "ncnn": ("ncnn", {"ncnn"}), "mnn": ("MNN", {"mnn"}), "openvino": ("openvino", {"openvino"})}


def test_the_offline_bundle_holds_the_edge_formats_verified_at_every_batch_size(pipeline_run: dict, pipeline_root: Path):
    assert set(EDGE) <= set(pipeline_run["export"]["formats"])
    verdict = pipeline_run["verify"]
    assert verdict["passed"] and verdict["batch_sizes"] == [1, 2, 7, 64] and verdict["images"] == 512
    rows = {r["format"]: r for r in verdict["formats"]}
    for fmt in EDGE:
        assert rows[fmt]["passed"] and rows[fmt]["top1_agreement"] == 1.0, rows[fmt]
        assert sorted(rows[fmt]["by_batch_size"]) == ["1", "2", "64", "7"]
        assert rows[fmt]["sandbox"].startswith("landlock")  # loaded in a confined worker
    assert verdict["reexport"]["litert"] == [] and verdict["reexport"]["ncnn"] == []  # byte-identical re-exports
    bundle = pipeline_root / "exports/lenet5/v1"
    meta = json.loads((bundle / "model.json").read_text())["metadata"]
    assert embedded_meta((bundle / "model.tflite").read_bytes()) == meta
    from ai_edge_litert.interpreter import Interpreter

    entry = Interpreter(model_path=str(bundle / "model.tflite")).get_input_details()[0]
    assert list(entry["shape_signature"]) == [-1, 1, 28, 28]  # the batch axis stays dynamic, the input NCHW
    assert (bundle / "model.ncnn.param").read_text().startswith("7767517") and (bundle / "model.ncnn.bin").is_file()
    card = (bundle / "README.md").read_text()
    assert all(name in card for name in ("model.tflite", "model.ncnn.param", "model.mnn"))


def _onnx_with(node: onnx.NodeProto, initializers: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_the_litert_translation_refuses_what_it_does_not_cover_by_name():
    with pytest.raises(ExportFailed, match="the ONNX operator Gelu .* is not in cnnpipe's ONNX-to-LiteRT translation"):
        translate(_onnx_with(helper.make_node("Gelu", ["input"], ["logits"], name="gelu")), b"{}")
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 2, 3, 3], np.zeros(72, np.float32).tolist())
    grouped = helper.make_node("Conv", ["input", "w"], ["logits"], name="grouped", group=2, kernel_shape=[3, 3],
                               pads=[1, 1, 1, 1])
    with pytest.raises(ExportFailed, match="Conv grouped has 2 groups of several channels"):
        translate(_onnx_with(grouped, [weight]), b"{}")
    pool = helper.make_node("MaxPool", ["input"], ["logits"], name="pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    with pytest.raises(ExportFailed, match="rounds its output size up"):
        translate(_onnx_with(pool), b"{}")


GROUPED_NET = '''
import torch.nn as nn

def grouped(num_classes=10, in_channels=1, **_):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def test_a_network_the_converter_cannot_take_is_one_line_and_nothing_is_written(root_copy: Path):
    (root_copy / "grouped.py").write_text(GROUPED_NET)
    cnnpipe_json(root_copy, "train", "--model", "grouped.py:grouped", "--name", "grouped", "--epochs", "1", "--no-plots")
    before = tree_state(root_copy / "exports")
    proc = cnnpipe(root_copy, "export", "grouped", "--format", "onnx", "--format", "litert", "--trust-code")
    assert_clean_error(proc, 2, "litert export failed: Conv", "has 2 groups of several channels")
    assert tree_state(root_copy / "exports") == before


# ---- the kit --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit(pipeline_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kit of the offline bundle: every torch-free format, 12 real test images."""
    out = tmp_path_factory.mktemp("kit") / "kit"
    made = cnnpipe_json(pipeline_root, "kit", "lenet5", "--out", str(out), "--images", "12")
    assert made["formats"] == ["onnx", "openvino", "ort", *EDGE] and made["images"] == 12 and not made["signed"]
    return out


def _check(python: Path | str, kit: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    plain = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | (env or {})
    return subprocess.run([str(python), str(kit / "check.py"), *args], cwd=kit.parent, capture_output=True, text=True,
                          timeout=300, env=plain)


def _shift_output(path: Path, bias: np.ndarray) -> None:
    """Add 100 to class 0's bias in a model file: an answer that differs, in a file that still loads."""
    data = path.read_bytes()
    at = data.find(bias.astype(np.float32).tobytes())
    assert at >= 0, path
    changed = bias.astype(np.float32).copy()
    changed[0] += 100
    path.write_bytes(data[:at] + changed.tobytes() + data[at + 40:])


def _rehash(kit: Path) -> None:
    """What an attacker who can write the kit does: kit.json's sha256 made to fit the changed files."""
    manifest = json.loads((kit / "kit.json").read_text())
    import hashlib

    manifest["files"] = {rel: hashlib.sha256((kit / rel).read_bytes()).hexdigest() for rel in manifest["files"]}
    (kit / "kit.json").write_text(json.dumps(manifest))


def test_the_kit_checks_every_format_and_catches_a_changed_file_and_a_wrong_preprocessing(kit: Path, pipeline_root: Path,
                                                                                          tmp_path: Path):
    proc = _check(sys.executable, kit)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((kit / "report.json").read_text())
    assert [r["format"] for r in report["formats"]] == ["onnx", "openvino", "ort", *EDGE]
    assert all(r["verdict"] == "pass" for r in report["formats"]) and report["images"] == 12
    manifest = json.loads((kit / "kit.json").read_text())
    inputs, images = np.load(kit / "inputs.npy"), sorted((kit / "images").iterdir())
    assert inputs.shape == (12, 1, 28, 28) and len(images) == 12 and np.load(kit / "logits.npy").shape == (12, 10)
    assert manifest["bundle"] == "lenet5@v1" and "subtract mean" in manifest["preprocessing"]

    (tmp_path / "mine.py").write_text(
        "import numpy as np\nfrom PIL import Image\n"
        f"MEAN, STD = {manifest['input']['mean'][0]!r}, {manifest['input']['std'][0]!r}\n"
        "def flat(path):\n    return (np.asarray(Image.open(path).convert('L'), np.float32) / 255 - MEAN) / STD\n"
        "def right(path):\n    return flat(path)[None]\n"
        "def unnormalized(path):\n    return (np.asarray(Image.open(path).convert('L'), np.float32) / 255)[None]\n")
    mine = {"PYTHONPATH": str(tmp_path)}
    proc = _check(sys.executable, kit, "--format", "onnx", "--preprocess", "mine:flat", env=mine)
    assert proc.returncode == 1 and "returned shape (28, 28)" in proc.stdout  # C×H×W is asked for: no channel axis
    assert _check(sys.executable, kit, "--format", "onnx", "--preprocess", "mine:right", env=mine).returncode == 0
    proc = _check(sys.executable, kit, "--format", "onnx", "--preprocess", "mine:unnormalized", env=mine)
    assert proc.returncode == 1 and f"{images[0].relative_to(kit)}: mine:unnormalized differs from cnnpipe's input" in proc.stdout

    changed = tmp_path / "changed"
    shutil.copytree(kit, changed)
    bias = load_file(str(pipeline_root / "models/lenet5/v1/weights.safetensors"))
    (bias,) = [v for v in bias.values() if v.shape == (10,)]
    _shift_output(changed / "model/model.tflite", bias)
    proc = _check(sys.executable, changed, "--format", "litert", "--format", "onnx")
    assert proc.returncode == 1 and "model/model.tflite: changed (its sha256 is not kit.json's)" in proc.stdout
    _rehash(changed)  # the sha256 fits again: the answers must give it away
    proc = _check(sys.executable, changed, "--format", "litert", "--format", "onnx")
    rows = {r["format"]: r for r in json.loads((changed / "report.json").read_text())["formats"]}
    assert proc.returncode == 1 and rows["onnx"]["verdict"] == "pass" and rows["litert"]["verdict"] == "FAIL"
    assert "max abs diff 100" in rows["litert"]["reason"]


def test_a_signed_bundle_gets_a_kit_signed_with_its_key_and_check_refuses_a_changed_kit(root_copy: Path, tmp_path: Path):
    keys = tmp_path / "keys"
    cnnpipe_json(root_copy, "keygen", "--out", str(keys))
    cnnpipe_json(root_copy, "sign", "lenet5", "--key", str(keys / "cnnpipe-signing.key"))
    out = tmp_path / "kit"
    assert_clean_error(cnnpipe_here(root_copy, "kit", "lenet5", "--out", str(out)), 2, "is signed, so its kit is signed too")
    other = tmp_path / "other"
    cnnpipe_json(root_copy, "keygen", "--out", str(other))
    assert_clean_error(cnnpipe_here(root_copy, "kit", "lenet5", "--out", str(out), "--sign-key",
                                    str(other / "cnnpipe-signing.key")), 2, "with the key that signed the bundle")
    assert not out.exists()
    made = cnnpipe_json(root_copy, "kit", "lenet5", "--out", str(out), "--format", "onnx", "--images", "4",
                        "--sign-key", str(keys / "cnnpipe-signing.key"))
    assert made["signed"] and (out / "kit.sig").is_file()
    public = keys / "cnnpipe-signing.pub"
    assert _check(sys.executable, out, "--public-key", str(public)).returncode == 0
    assert _check(sys.executable, out, "--public-key", str(other / "cnnpipe-signing.pub")).returncode == 1
    np.save(out / "inputs.npy", np.load(out / "inputs.npy") * 0)  # golden inputs changed, kit.json re-hashed
    _rehash(out)
    proc = _check(sys.executable, out, "--public-key", str(public))
    assert proc.returncode == 1 and "the kit's signature does not verify" in proc.stderr


def test_kit_usage_errors_are_one_line_and_write_nothing(pipeline_root: Path, tmp_path: Path):
    existing = tmp_path / "there"
    existing.mkdir()
    assert_clean_error(cnnpipe_here(pipeline_root, "kit", "lenet5", "--out", str(existing)), 2, "already exists")
    for images in ("0", "100000"):
        assert_clean_error(cnnpipe_here(pipeline_root, "kit", "lenet5", "--out", str(tmp_path / "k"), "--images", images),
                           2, "--images must be from 1 to 10,000")
    assert_clean_error(cnnpipe_here(pipeline_root, "kit", "lenet5", "--out", str(tmp_path / "k"), "--format", "pt2"), 2,
                       "'pt2' is not one of 'onnx'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there"]


def _uv() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("uv is not installed (.ci/run installs it)")
    return found


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_the_kit_runs_where_only_numpy_pillow_and_one_runtime_are_installed(runtime: str, kit: Path, pipeline_root: Path,
                                                                           tmp_path: Path):
    distribution, formats = RUNTIMES[runtime]
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120, env=env)
    python = venv / "bin" / "python"
    install = subprocess.run([_uv(), "pip", "install", "--quiet", "--python", str(python), "numpy", "pillow", distribution],
                             capture_output=True, text=True, timeout=600, env=env)
    assert install.returncode == 0, install.stderr[-2000:]
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True, timeout=60).returncode != 0
    mine = tmp_path / "kit"
    shutil.copytree(kit, mine)
    proc = _check(python, mine)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["format"]: r["verdict"] for r in json.loads((mine / "report.json").read_text())["formats"]}
    assert {f for f, verdict in rows.items() if verdict == "pass"} == formats
    assert {f for f, verdict in rows.items() if verdict == "skipped"} == set(rows) - formats

    weights = load_file(str(pipeline_root / "models/lenet5/v1/weights.safetensors"))
    (bias,) = [v for v in weights.values() if v.shape == (10,)]
    record = json.loads((mine / "kit.json").read_text())["formats"]
    for fmt in formats:
        _shift_output(mine / record[fmt]["files"][-1 if fmt in ("ncnn", "openvino") else 0], bias)
    _rehash(mine)
    proc = _check(python, mine)
    rows = {r["format"]: r for r in json.loads((mine / "report.json").read_text())["formats"]}
    assert proc.returncode == 1 and all(rows[f]["verdict"] == "FAIL" and "max abs diff" in rows[f]["reason"] for f in formats)
    assert all(f"{f} " in proc.stdout for f in formats)
