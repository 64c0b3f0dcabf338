"""Using and checking a bundle: predict (without torch), an ONNX-only consumer, variants, wrong exports, bench."""

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
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cnnpipe.formats import BASE_FORMATS, FORMATS
from cnnpipe.nets.modelfile import load_model
from cnnpipe.store.workspace import Workspace
from cnnpipe.training.engine import batched_logits
from test_imagefolder import _make_folder

from conftest import assert_clean_error, card_snippets_answer, cli_env, cnnpipe, cnnpipe_here, cnnpipe_json, resign

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "onnx_predict.py"


def write_pngs(root: Path, indices: list[int], folder: Path) -> list[Path]:
    """Test-split images of mnist-sample@v1 as lossless PNG files."""
    images = np.load(root / "data/mnist-sample/v1/splits/test-images.npy")
    folder.mkdir()
    paths = []
    for i in indices:
        path = folder / f"test-{i:04d}.png"
        Image.fromarray(images[i][0]).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(pipeline_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[int], list[Path]]:
    """48 test images: the 16 most confident mistakes evaluate found, and the first ones of the split."""
    metrics = json.loads((pipeline_root / "models/lenet5/v1/eval/test/v1/metrics.json").read_text())
    wrong = [e["index"] for e in metrics["misclassified"][:16]]
    indices = wrong + [i for i in range(48) if i not in wrong][: 48 - len(wrong)]
    return indices, write_pngs(pipeline_root, indices, tmp_path_factory.mktemp("pngs") / "images")


@pytest.fixture(scope="module")
def predicted(pipeline_root: Path, images: tuple[list[int], list[Path]], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``cnnpipe predict --json`` on the images, run where importing torch fails."""
    blocker = tmp_path_factory.mktemp("no-torch") / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('torch must not be imported by predict')\n")
    env = cli_env() | {"PYTHONPATH": str(blocker.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnpipe", "--root", str(pipeline_root), "predict", *map(str, images[1]),
         "--bundle", "lenet5", "--top-k", "3", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_predict_runs_without_torch_and_agrees_with_evaluate(pipeline_root: Path, images, predicted):
    indices, paths = images
    assert predicted["providers"] == ["CPUExecutionProvider"] and predicted["images"] == len(paths)
    assert all(len(p["top"]) == 3 for p in predicted["predictions"])
    top1 = [p["top"][0]["class"] for p in predicted["predictions"]]
    metrics = json.loads((pipeline_root / "models/lenet5/v1/eval/test/v1/metrics.json").read_text())
    for e in metrics["misclassified"][:16]:  # evaluate's own record of what it predicted
        assert top1[indices.index(e["index"])] == str(e["predicted"])
    model, desc = load_model(Workspace(pipeline_root).models.resolve("lenet5@v1"))
    raw = torch.from_numpy(np.load(pipeline_root / "data/mnist-sample/v1/splits/test-images.npy")[indices])
    logits = batched_logits(model, raw, list(desc.input.mean), list(desc.input.std), 256, torch.device("cpu"))
    assert top1 == [str(int(i)) for i in logits.argmax(1)]
    probs = torch.softmax(logits, 1).max(1).values.numpy()
    assert np.allclose([p["top"][0]["probability"] for p in predicted["predictions"]], probs, atol=1e-5)


def test_every_load_snippet_of_the_card_runs_as_written_and_answers_as_predict(pipeline_root: Path, images,
                                                                              tmp_path: Path):
    """Each format's snippet, taken from the card as written, in a fresh process on a real digit that the model
    gets wrong, stored at twice its size so the snippet's resize filter must be cnnpipe's."""
    image = tmp_path / "digit.png"
    Image.open(images[1][0]).resize((56, 56), Image.Resampling.BICUBIC).save(image)
    predicted = cnnpipe_json(pipeline_root, "predict", str(image), "--bundle", "lenet5")["predictions"][0]["top"][0]
    card = (pipeline_root / "exports/lenet5/v1/README.md").read_text()
    answers = card_snippets_answer(pipeline_root / "exports/lenet5/v1", image, tmp_path / "bundle")
    assert len(answers) == card.count("```python") == len([f for f in BASE_FORMATS if FORMATS[f].snippet]) >= 5
    assert set(answers) == {predicted["class"]}


def test_an_onnx_only_environment_gives_the_same_answers(pipeline_root: Path, images, predicted, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "onnxruntime", "numpy", "pillow"],
        capture_output=True, text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert install.returncode == 0, install.stderr
    check = subprocess.run([str(python), "-c", "import torch"], capture_output=True, timeout=60)
    assert check.returncode != 0  # the environment really has no torch
    onnx_file = pipeline_root / "exports/lenet5/v1/model.onnx"
    proc = subprocess.run(
        [str(python), str(EXAMPLE), str(onnx_file), *map(str, images[1])], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["class"] for line in lines] == [p["top"][0]["class"] for p in predicted["predictions"]]
    assert np.allclose([line["probability"] for line in lines],
                       [p["top"][0]["probability"] for p in predicted["predictions"]], atol=1e-5)


def test_predict_refuses_bad_images_in_one_line(pipeline_root: Path, tmp_path: Path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    assert_clean_error(cnnpipe_here(pipeline_root, "predict", str(fake), "--bundle", "lenet5"), 2,
                       "not a readable image", "notes.png")
    gone = str(tmp_path / "gone.png")
    assert_clean_error(cnnpipe_here(pipeline_root, "predict", gone, "--bundle", "lenet5"), 2, "no such image file")
    assert_clean_error(cnnpipe_here(pipeline_root, "predict", str(fake), "--bundle", "ghost"), 2,
                       "no export bundle named 'ghost'")


def test_variants_and_triton_layout_are_exported_and_verified(root_copy: Path):
    exported = cnnpipe_json(root_copy, "export", "lenet5", "--fp16", "--int8", "--layout", "triton")
    assert exported["formats"] == ["onnx", "pt2", "safetensors", "openvino", "executorch", "ort", "litert", "ncnn", "mnn",
                                   "torchscript", "onnx-fp16", "onnx-int8", "openvino-fp16", "openvino-int8"]
    bundle = Path(exported["path"])
    assert exported["triton"] == ["triton/lenet5/config.pbtxt", "triton/lenet5/1/model.onnx"]
    assert (bundle / "triton/lenet5/1/model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    assert "dims: [ 1, 28, 28 ]" in (bundle / "triton/lenet5/config.pbtxt").read_text()
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        graph = onnx.load(str(bundle / name))
        assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param, name  # symbolic batch axis
        props = {p.key: p.value for p in graph.metadata_props}
        assert props["model_name"] == "lenet5" and props["onnx_opset"] == str(exported["opset"])
    int8_props = {p.key: p.value for p in onnx.load(str(bundle / "model.int8.onnx")).metadata_props}
    assert int8_props["precision"] == "int8" and "256 training images" in int8_props["calibration"]

    verdict = cnnpipe_json(root_copy, "verify", "lenet5", "--full")
    assert verdict["passed"] and verdict["images"] == 2000
    by_format = {f["format"]: f for f in verdict["formats"]}
    assert set(by_format) == set(exported["formats"])
    for f in by_format.values():
        assert set(f["by_batch_size"]) == {"1", "2", "7", "64"}
        assert set(f["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert by_format["onnx-int8"]["tolerance"]["atol"] is None
    assert abs(by_format["onnx-int8"]["accuracy_delta_points"]) <= 2.0
    assert by_format["onnx"]["accuracy_delta_points"] == 0.0

    timed = cnnpipe_json(root_copy, "bench", "lenet5", "--seconds", "0.05", "--batch-sizes", "2", "--threads", "1")
    assert {r["runtime"] for r in timed["rows"]} >= {"onnxruntime fp16 (cpu)", "onnxruntime int8 (cpu)"}
    fastest = max(timed["rows"], key=lambda r: r["images_per_s"])  # int8 kept its limit: it may be recommended
    assert timed["recommended"] == {"2": fastest["runtime"]} and timed["not_recommended"] == {}


def test_a_perturbed_weight_fails_verify_even_with_a_consistent_manifest(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    path = bundle / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(path)
    name = sorted(state)[0]
    state[name] = state[name] + 0.05
    save_file(state, path, metadata=meta)
    resign(bundle, "model.safetensors")
    proc = cnnpipe(root_copy, "verify", "lenet5", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["integrity"] == "ok"
    by_format = {f["format"]: f for f in report["formats"]}
    assert not by_format["safetensors"]["passed"] and "logits beyond atol" in by_format["safetensors"]["reasons"][0]
    assert by_format["onnx"]["passed"] and by_format["torchscript"]["passed"]


@pytest.mark.filterwarnings("ignore:Exporting a model while it is in training mode")
def test_an_onnx_exported_in_training_mode_fails_verify(tmp_path: Path):
    _make_folder(tmp_path / "images", per_class=16)
    root = tmp_path / "store"
    root.mkdir()
    cnnpipe_json(root, "download", "imagefolder", str(tmp_path / "images"), "--name", "tiny", "--no-plots")
    cnnpipe_json(root, "train", "--model", "dropout-cnn", "--dataset", "tiny", "--epochs", "1", "--batch-size", "8")
    cnnpipe_json(root, "export", "dropout-cnn", "--format", "onnx")
    bundle = root / "exports/dropout-cnn/v1"
    good = onnx.load(str(bundle / "model.onnx"))
    model, desc = load_model(Workspace(root).models.resolve("dropout-cnn"))
    example = torch.randn(2, 3, 32, 32)
    torch.onnx.export(model.train(), (example,), str(bundle / "model.onnx"), dynamo=True, input_names=["input"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    bad = onnx.load(str(bundle / "model.onnx"))
    bad.metadata_props.extend(good.metadata_props)
    onnx.save(bad, str(bundle / "model.onnx"))
    resign(bundle, "model.onnx")
    proc = cnnpipe(root, "verify", "dropout-cnn", "--samples", "9", "--json")
    assert proc.returncode == 1, proc.stderr
    (report,) = json.loads(proc.stdout)["formats"]
    assert not report["passed"] and any("Dropout" in r for r in report["reasons"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_verify_for_cuda_without_it_fails_with_the_reason(pipeline_root: Path):
    proc = cnnpipe(pipeline_root, "verify", "lenet5", "--providers", "cuda", "--samples", "16", "--json")
    assert proc.returncode == 1
    (onnx_report,) = [f for f in json.loads(proc.stdout)["formats"] if f["format"] == "onnx"]
    assert onnx_report["providers"][0] == "CPUExecutionProvider"
    assert "CUDAExecutionProvider was asked for but the session runs on CPUExecutionProvider" in onnx_report["reasons"]
    (fresh,) = [f for f in json.loads(proc.stdout)["formats"] if f["format"] == "safetensors"]
    assert fresh["runtime"] == "torch (fresh model)[cuda]" and not fresh["passed"]
    assert fresh["reasons"] == ["CUDA was asked for, but PyTorch sees no CUDA device here"]


def test_bench_times_every_runtime_at_each_batch_size(pipeline_root: Path):
    result = cnnpipe_json(pipeline_root, "bench", "lenet5", "--seconds", "0.2", "--batch-sizes", "1,8", "--threads", "1")
    rows = {(r["runtime"], r["batch"]): r for r in result["rows"]}
    runtimes = {"pytorch eager (cpu)", "torchscript (cpu)", "pt2 (cpu)", "onnxruntime (cpu)"}
    assert {r for r, _ in rows} >= runtimes and {b for _, b in rows} == {1, 8}
    for r in rows.values():
        assert r["calls"] >= 20 and 0 < r["p50_ms"] <= r["p99_ms"] and r["images_per_s"] > 0


needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler for AOTInductor")


@needs_cxx
def test_an_aoti_package_is_compiled_verified_timed_and_refused_on_a_cpu_without_its_instructions(aoti_copy: Path):
    root_copy = aoti_copy  # lenet5@v2: `export lenet5 --format pt2 --aoti`, compiled once per session
    assert_clean_error(cnnpipe_here(root_copy, "export", "lenet5", "--format", "onnx", "--aoti"), 2, "add --format pt2")
    exported = {"ref": "lenet5@v2", "path": str(root_copy / "exports/lenet5/v2")}
    bundle = Path(exported["path"])
    assert json.loads((bundle / "model.json").read_text())["formats"] == ["pt2", "pt2-aoti"]
    compiled_for = json.loads((bundle / "model.json").read_text())["variants"]["pt2-aoti"]["compiled_for"]
    assert compiled_for["platform"] == f"{sys.platform}-{os.uname().machine}" and compiled_for["device"] == "cpu"

    verdict = cnnpipe_json(root_copy, "verify", exported["ref"], "--samples", "64", "--trust-native")
    (aoti,) = [f for f in verdict["formats"] if f["format"] == "pt2-aoti"]
    assert verdict["passed"] and aoti["runtime"] == "AOTInductor" and aoti["top1_agreement"] == 1.0
    timed = cnnpipe_json(root_copy, "bench", exported["ref"], "--seconds", "0.05", "--batch-sizes", "2", "--threads", "1",
                         "--trust-native")
    assert "aoti (cpu)" in {r["runtime"] for r in timed["rows"]}

    desc = json.loads((bundle / "model.json").read_text())
    desc["variants"]["pt2-aoti"]["compiled_for"]["cpu_isa"] = "avx10_2 amx_fp8"  # as if built on a newer CPU
    (bundle / "model.json").write_text(json.dumps(desc))
    resign(bundle, "model.json")
    proc = cnnpipe(root_copy, "verify", exported["ref"], "--samples", "64", "--json", "--trust-native")
    assert proc.returncode == 1, proc.stderr
    by_format = {f["format"]: f for f in json.loads(proc.stdout)["formats"]}
    assert by_format["pt2"]["passed"] and not by_format["pt2-aoti"]["passed"]
    assert "compiled for CPU instructions 'avx10_2 amx_fp8', which this machine lacks" in by_format["pt2-aoti"]["reasons"][0]


def test_aoti_without_a_compiler_is_one_line_and_writes_no_bundle(root_copy: Path, tmp_path: Path):
    env = cli_env() | {"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnpipe", "--root", str(root_copy), "export", "lenet5", "--format", "pt2", "--aoti"],
        cwd=root_copy, env=env, capture_output=True, text=True, timeout=600,
    )
    assert_clean_error(proc, 2, "AOTInductor compile failed (it needs a C++ compiler such as g++)")
    assert sorted(p.name for p in (root_copy / "exports/lenet5").iterdir() if not p.name.startswith(".")) == ["latest", "v1"]
