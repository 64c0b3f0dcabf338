"""Hostile but valid files: a graph that never ends fails its format under --timeout, it never hangs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_clean_error, cnnpipe, cnnpipe_here, resign

LIMIT = "15"  # seconds: the other formats must finish well within it on a loaded 2-core machine


def endless(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same network with a Loop of 2^62 trips whose start depends on the input (so no runtime can
    fold it away) added to the logits times zero: valid ONNX, same answers, never finishes."""
    graph = model.graph
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.ones(1, np.float32))),
         helper.make_node("Add", ["c_in", "one"], ["c_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("c_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("c_out", TensorProto.FLOAT, [1])],
    )
    graph.initializer.extend([
        numpy_helper.from_array(np.array(2**62, np.int64), "spin_trips"),
        numpy_helper.from_array(np.array(True), "spin_cond"),
        numpy_helper.from_array(np.array([1], np.int64), "spin_shape"),
        numpy_helper.from_array(np.zeros(1, np.float32), "spin_zero"),
    ])
    logits = graph.output[0].name
    graph.node.extend([
        helper.make_node("ReduceMax", [graph.input[0].name], ["spin_max"], keepdims=0),
        helper.make_node("Reshape", ["spin_max", "spin_shape"], ["spin_c0"]),
        helper.make_node("Loop", ["spin_trips", "spin_cond", "spin_c0"], ["spin_c"], body=body),
        helper.make_node("Mul", ["spin_c", "spin_zero"], ["spin_z"]),
        helper.make_node("Add", [logits, "spin_z"], ["spun"]),
    ])
    graph.output[0].name = "spun"
    onnx.checker.check_model(model, full_check=True)
    return model


def _spin_onnx(bundle: Path) -> None:
    onnx.save(endless(onnx.load(bundle / "model.onnx")), bundle / "model.onnx")
    resign(bundle, "model.onnx")


def test_an_endless_onnx_graph_fails_its_format_in_verify_and_the_others_are_judged(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    _spin_onnx(bundle)
    start = time.monotonic()
    proc = cnnpipe(root_copy, "verify", "lenet5", "--samples", "16", "--timeout", LIMIT, "--json", timeout=300)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    by_format = {r["format"]: r for r in report["formats"]}
    assert not by_format["onnx"]["passed"]
    assert f"did not finish within {LIMIT} s (--timeout); its worker was stopped" in by_format["onnx"]["reasons"][0]
    assert by_format["pt2"]["passed"] and by_format["safetensors"]["passed"]
    assert time.monotonic() - start < 300


def test_an_endless_onnx_graph_is_one_line_in_predict_and_a_failed_row_in_bench(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    _spin_onnx(bundle)
    image = root_copy / "digit.png"
    from PIL import Image

    Image.new("L", (28, 28), 128).save(image)
    assert_clean_error(
        cnnpipe(root_copy, "predict", str(image), "--bundle", "lenet5", "--timeout", LIMIT, timeout=120),
        2, f"did not finish within {LIMIT} s",
    )
    proc = cnnpipe(root_copy, "bench", "lenet5", "--seconds", "0.2", "--batch-sizes", "1", "--timeout", LIMIT,
                   "--json", timeout=300)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    from cnnpipe.formats import FORMATS

    assert "did not finish within" in result["failed"][f"{FORMATS['onnx'].bench_label} (cpu)"]
    assert f"{FORMATS['pt2'].bench_label} (cpu)" in {row["runtime"] for row in result["rows"]}  # the others are timed


def test_a_runtime_that_cannot_be_stopped_fails_its_format_and_the_process_still_ends(root_copy: Path):
    import openvino as ov

    bundle = root_copy / "exports/lenet5/v1"
    spun = root_copy / "spun.onnx"
    onnx.save(endless(onnx.load(bundle / "model.onnx")), spun)
    ov.save_model(ov.convert_model(str(spun)), str(bundle / "model.openvino.xml"), compress_to_fp16=False)
    for rel in ("model.openvino.xml", "model.openvino.bin"):
        resign(bundle, rel)
    reports_before = set((bundle / "verify").glob("*.json"))
    start = time.monotonic()
    proc = cnnpipe(root_copy, "verify", "lenet5", "--samples", "16", "--timeout", LIMIT, "--json", timeout=300)
    assert proc.returncode == 1, proc.stderr
    by_format = {r["format"]: r for r in json.loads(proc.stdout)["formats"]}
    assert "did not finish within" in by_format["openvino"]["reasons"][0]  # its worker is killed, runtime and all
    assert by_format["onnx"]["passed"] and by_format["pt2"]["passed"]
    assert time.monotonic() - start < 300
    reports = list(set((bundle / "verify").glob("*.json")) - reports_before)  # written before the process ended
    assert len(reports) == 1 and not json.loads(reports[0].read_text())["passed"]


def test_a_timeout_that_is_not_a_positive_number_is_refused(root_copy: Path):
    for value in ("0", "-1", "nan", "inf"):
        assert_clean_error(cnnpipe_here(root_copy, "verify", "lenet5", "--timeout", value), 2, "--timeout must be a")
