"""The stages through the real CLI in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image

from conftest import assert_clean_error, cnnpipe, cnnpipe_here, cnnpipe_json, resign, tree_state


def test_run_twice_gives_v1_then_v2_and_leaves_v1_untouched(root_copy: Path, pipeline_run: dict):
    root, first = root_copy, pipeline_run  # the first run is the one that built the shared root
    assert first["train"]["ref"] == "lenet5@v1"
    assert first["evaluate"]["accuracy"] >= 0.95
    verdict = first["verify"]
    assert verdict["passed"] and verdict["integrity"] == "ok"
    by_format = {f["format"]: f for f in verdict["formats"]}
    assert set(by_format) == {"onnx", "pt2", "safetensors", "openvino", "executorch", "ort", "litert", "ncnn", "mnn",
                              "torchscript"}
    assert by_format["onnx"]["max_abs_diff"] <= 1e-4
    assert all(f["top1_agreement"] == 1.0 for f in verdict["formats"])
    assert set(by_format["onnx"]["by_batch_size"]) == {"1", "2", "7", "64"}
    v1 = {p: tree_state(root / p / "lenet5" / "v1") for p in ("models", "exports")}

    second = cnnpipe_json(root, "run", "--format", "onnx")
    assert second["download"]["reused"] is True
    assert second["train"]["ref"] == "lenet5@v2" and second["export"]["ref"] == "lenet5@v2"
    assert {p: tree_state(root / p / "lenet5" / "v1") for p in ("models", "exports")} == v1
    for store in ("models", "exports"):
        assert (root / store / "lenet5" / "latest").read_text().strip() == "v2"
    # Same seed on the CPU: the same weights, bit for bit.
    shas = [
        {f["path"]: f["sha256"] for f in json.loads((root / f"models/lenet5/{v}/manifest.json").read_text())["files"]}
        for v in ("v1", "v2")
    ]
    assert shas[0]["weights.safetensors"] == shas[1]["weights.safetensors"]
    assert not list(root.rglob(".tmp-*"))


def test_each_stage_through_the_cli(tmp_path: Path):
    down = cnnpipe_json(tmp_path, "download")
    assert down["ref"] == "mnist-sample@v1" and not down["reused"]
    assert {p: sum(c.values()) for p, c in down["counts"].items()} == {"val": 1000, "test": 2000, "train": 7000}
    assert cnnpipe_json(tmp_path, "download")["reused"] is True

    trained = cnnpipe_json(tmp_path, "train", "--epochs", "1", "--name", "digits", "--seed", "3")
    assert trained["ref"] == "digits@v1" and trained["params"] == 61706 and not trained["compiled"]
    version = tmp_path / "models/digits/v1"
    for name in ("weights.safetensors", "model.json", "train.json", "history.jsonl", "curves.png", "manifest.json"):
        assert (version / name).is_file(), name
    assert (version / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["lineage"]["parents"][0]["ref"] == "mnist-sample@v1"
    assert manifest["lineage"]["dataset_hash"] == down["dataset_hash"]
    assert manifest["lineage"]["seed"] == 3 and manifest["lineage"]["config"]["epochs"] == 1

    evaluated = cnnpipe_json(tmp_path, "evaluate", "digits@v1")
    assert evaluated["images"] == 2000 and len(evaluated["per_class"]) == 10
    assert sum(c["support"] for c in evaluated["per_class"]) == 2000
    assert sum(map(sum, evaluated["confusion"])) == 2000
    metrics = json.loads((Path(evaluated["path"]) / "metrics.json").read_text())
    assert metrics["accuracy"] == evaluated["accuracy"] > 0.5

    exported = cnnpipe_json(tmp_path, "export", "digits", "--format", "onnx")
    bundle = tmp_path / "exports/digits/v1"
    assert exported["formats"] == ["onnx"] and (bundle / "model.onnx").is_file()
    assert not (bundle / "model.torchscript.pt").exists()
    graph = onnx.load(str(bundle / "model.onnx"))
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["classes"]) == [str(d) for d in range(10)]
    assert props["model_name"] == "digits" and props["model_version"] == "v1"
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param

    verified = cnnpipe_json(tmp_path, "verify", "digits@latest")
    assert verified["passed"] and [f["format"] for f in verified["formats"]] == ["onnx"]
    assert verified["formats"][0]["providers"] == ["CPUExecutionProvider"]
    assert Path(verified["report_path"]).parent == bundle / "verify"

    listing = cnnpipe_json(tmp_path, "ls")
    assert [v["version"] for v in listing["models"]["digits"]] == [1]
    assert listing["exports"]["digits"][0]["formats"] == ["onnx"]
    shown = cnnpipe_json(tmp_path, "show", "digits", "--store", "exports")
    assert shown["stage"] == "export" and shown["name"] == "digits"
    human = cnnpipe(tmp_path, "evaluate", "digits")
    assert human.returncode == 0 and "worst classes first" in human.stdout


def test_compile_on_trains_on_cpu_and_its_weights_export_and_verify(root_copy: Path):
    trained = cnnpipe_json(root_copy, "train", "--compile", "on", "--epochs", "1", "--name", "compiled")
    assert trained["compiled"] is True and trained["compile_s"] > 0
    exported = cnnpipe_json(root_copy, "export", "compiled", "--format", "safetensors", "--format", "onnx")
    assert sorted(exported["formats"]) == ["onnx", "safetensors"]
    assert cnnpipe_json(root_copy, "verify", "compiled")["passed"]


def test_verify_fails_closed_on_a_breach_and_on_a_changed_file(root_copy: Path):
    strict = cnnpipe(root_copy, "verify", "lenet5", "--atol", "0", "--rtol", "0", "--json")
    assert strict.returncode == 1, strict.stderr
    report = json.loads(strict.stdout)
    assert not report["passed"] and any("atol" in r for f in report["formats"] for r in f["reasons"])
    assert json.loads(Path(report["report_path"]).read_text())["passed"] is False

    onnx_file = root_copy / "exports/lenet5/v1/model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    tampered = cnnpipe(root_copy, "verify", "lenet5")
    assert tampered.returncode == 1
    assert "model.onnx" in tampered.stdout and "sha256" in tampered.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["train", "--dataset", "imagenet"], "no dataset named 'imagenet'"),
        (["download", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--epochs", "many"], "Invalid value for '--epochs'"),
        (["train", "--lr", "fast"], "Invalid value for '--lr'"),
        (["train", "--epochs", "0"], "--epochs must be between 1 and 100,000"),
        (["train", "--name", "../escape"], "invalid model name"),
        (["export", "lenet5", "--format", "tflite"], "Invalid value for '--format'"),
        (["evaluate", "nosuchmodel"], "no model named 'nosuchmodel'"),
        (["evaluate", "lenet5@v42"], "lenet5@v42 does not exist"),
        (["evaluate", "lenet5@seven"], "invalid version 'seven'"),
        (["evaluate", "lenet5", "--max-regression", "1"], "needs --against REF"),
        (["evaluate", "lenet5", "--min-accuracy", "95"], "fraction between 0 and 1"),
        (["evaluate", "lenet5", "--against", "ghost"], "no model named 'ghost'"),
        (["run", "--against", "ghost"], "no model named 'ghost'"),
        (["verify", "lenet5@v1/../../x"], "not a cnnpipe version"),
        (["verify", "lenet5", "--batch-sizes", "1,two"], "--batch-sizes must be comma-separated integers"),
        (["verify", "lenet5", "--providers", "tpu"], "unknown provider 'tpu'"),
        (["show", "ghost", "--store", "exports"], "no export bundle named 'ghost'"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_changes_nothing(root_copy: Path, args: list[str], needle: str):
    before = tree_state(root_copy)
    assert_clean_error(cnnpipe_here(root_copy, *args), 2, needle)
    assert tree_state(root_copy) == before


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_corrupt_weights_are_refused_by_name(root_copy: Path, damage: str):
    weights = root_copy / "models/lenet5/v1/weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * len(data)}[damage])
    before = tree_state(root_copy)
    for command in (["evaluate", "lenet5"], ["export", "lenet5"]):
        assert_clean_error(cnnpipe_here(root_copy, *command), 2, "weights.safetensors", "sha256")
    assert tree_state(root_copy) == before


def test_a_failed_stage_leaves_no_version_behind(root_copy: Path):
    before = tree_state(root_copy)
    assert_clean_error(cnnpipe_here(root_copy, "export", "lenet5", "--opset", "1"), 2, "ONNX export failed")
    assert_clean_error(cnnpipe_here(root_copy, "train", "--epochs", "1", "--lr", "1e30", "--name", "diverge"), 2, "loss became")
    assert tree_state(root_copy) == before
    assert not (root_copy / "exports/lenet5/v2").exists()
    assert not list((root_copy / "models/diverge").glob("v*"))
    assert not list(root_copy.rglob(".tmp-*"))


def test_debug_prints_the_runtimes_own_exception_behind_the_one_line(root_copy: Path, tmp_path: Path):
    """CNNPIPE_DEBUG=1 keeps the one-line error and adds the whole chain: onnxruntime's exception is the cause."""
    bundle = root_copy / "exports/lenet5/v1"
    (bundle / "model.onnx").write_bytes(b"not a protobuf" * 64)
    resign(bundle, "model.onnx")
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), 128).save(image)
    plain = cnnpipe(root_copy, "predict", str(image), "--bundle", "lenet5")
    assert_clean_error(plain, 2, "onnxruntime cannot load it")
    debug = cnnpipe(root_copy, "predict", str(image), "--bundle", "lenet5", env={"CNNPIPE_DEBUG": "1"})
    assert debug.returncode == 2 and "onnxruntime cannot load it" in debug.stderr.splitlines()[-1]
    assert "The above exception was the direct cause of the following exception" in debug.stderr
    assert "cnnpipe.errors.LoadFailed" in debug.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_absent_cuda_is_a_usage_error(root_copy: Path):
    assert_clean_error(cnnpipe_here(root_copy, "train", "--device", "cuda"), 2, "no CUDA device is available")
