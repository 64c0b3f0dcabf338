"""The int8 ladder: a recipe an outlier channel breaks is passed by, none within the limit is a refusal."""

import copy
import json
from pathlib import Path

import pytest
import torch

from cnnpipe.errors import CnnpipeError
from cnnpipe.formats import FORMATS
from cnnpipe.formats.int8 import climb, parse_recipe
from cnnpipe.formats.onnx import ORT_INT8
from cnnpipe.nets.modelfile import load_model
from cnnpipe.stages.bench import BenchRow, recommend, unqualified
from cnnpipe.stages.export import export_context
from cnnpipe.store.workspace import Workspace

from conftest import assert_clean_error, cnnpipe, cnnpipe_json, tree_state


def with_outlier_channel(model: torch.nn.Module, gain: float) -> torch.nn.Module:
    """LeNet-5 with a seventh channel after its first convolution that fires ``gain`` times brighter than the
    others on the brightest pixels, and that the next layer ignores (zero weights): the answers are the same,
    but a calibration that keeps the whole activation range leaves the other six channels a few levels."""
    m = copy.deepcopy(model)
    c1, c2 = m.features[0], m.features[3]
    n1, n2 = torch.nn.Conv2d(c1.in_channels, 7, 5, padding=2), torch.nn.Conv2d(7, 16, 5)
    with torch.no_grad():
        n1.weight.zero_(), n1.bias.zero_(), n2.weight.zero_()
        n1.weight[:6], n1.bias[:6] = c1.weight, c1.bias
        n1.weight[6, :, 2, 2], n1.bias[6] = gain, -gain * 2.75  # pixels of about 250 and up
        n2.weight[:, :6], n2.bias[:] = c2.weight, c2.bias
    m.features[0], m.features[3] = n1, n2
    return m.eval()


def test_the_ladder_passes_by_recipes_an_outlier_channel_breaks(pipeline_root: Path, tmp_path: Path):
    ws = Workspace(pipeline_root)
    version = ws.models.resolve("lenet5")
    model, desc = load_model(version)
    ctx = export_context(ws, version, with_outlier_channel(model, 1e5), desc, None, 256)
    FORMATS["onnx"].save(ctx, tmp_path / "model.onnx")
    report = climb(ORT_INT8, ctx, tmp_path / "model.onnx", tmp_path / "model.int8.onnx")  # 1 point, on the bound
    tried = {t["rung"]: t for t in report["tried"]}
    assert not tried["minmax"]["drop"]["passed"] and tried["minmax"]["drop"]["point"] > 10  # the plain recipe collapses
    chosen = tried[report["chosen"]]
    assert report["chosen"] != "minmax" and chosen["drop"]["passed"] and chosen["drop"]["high"] <= 1.0
    assert chosen["accuracy"] > tried["minmax"]["accuracy"] + 0.1
    assert report["certified"] and report["test"]["passed"] and report["test"]["high"] <= 1.0 and report["test"]["n"] == 2000
    # the recipe recorded makes the same bytes again (verify's re-export), without searching
    ORT_INT8.quantize(ORT_INT8.rung(report["chosen"]), tmp_path / "model.onnx", tmp_path / "again.onnx",
                      ctx.calibration(report["calibration_images"]), report["float_nodes"])
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "model.int8.onnx").read_bytes()


def test_a_limit_no_recipe_keeps_writes_no_int8_file_and_exits_1(root_copy: Path):
    before = tree_state(root_copy / "exports")
    proc = cnnpipe(root_copy, "export", "lenet5", "--format", "onnx", "--int8", "--max-int8-drop", "0.05", "--json")
    assert_clean_error(proc, 1, "export refused", "no quantization recipe keeps the accuracy within 0.05 points",
                       "best: ", "no int8 file was written")
    result = json.loads(proc.stdout)
    bundle = Path(result["path"])
    assert result["formats"] == ["onnx"] and not (bundle / "model.int8.onnx").exists()
    assert (bundle / "model.onnx").is_file() and {p for p in before} <= set(tree_state(root_copy / "exports"))
    report = json.loads((bundle / "model.json").read_text())["quantization"]["onnx-int8"]
    assert report["chosen"] is None and not report["certified"] and [t["rung"] for t in report["tried"]][0] == "minmax"
    assert "nncf-accuracy-control" in {t["rung"] for t in report["tried"]}
    assert "## Quantization" in (bundle / "README.md").read_text()
    assert cnnpipe_json(root_copy, "verify", result["ref"], "--samples", "64")["passed"]  # the rest of the bundle stands


def test_bench_recommends_an_int8_file_only_with_a_record_that_it_kept_its_limit():
    rows = [BenchRow("onnxruntime (cpu)", 1, 20, 1.0, 1.2, 1000.0, "onnx"),
            BenchRow("onnxruntime int8 (cpu)", 1, 20, 0.5, 0.6, 2000.0, "onnx-int8")]
    bundle = {"variants": {"onnx-int8": {"precision": "int8"}}}
    excluded = unqualified(bundle)
    assert set(excluded) == {"onnx-int8"} and recommend(rows, excluded) == {"1": "onnxruntime (cpu)"}
    bundle["quantization"] = {"onnx-int8": {"chosen": "entropy", "certified": True, "test": {"passed": True}}}
    assert unqualified(bundle) == {} and recommend(rows, {}) == {"1": "onnxruntime int8 (cpu)"}
    bundle["quantization"]["onnx-int8"]["certified"] = False
    assert set(unqualified(bundle)) == {"onnx-int8"}


@pytest.mark.parametrize("text", ['{"rung": "evil", "images": 256, "float_nodes": []}',
                                  '{"rung": "minmax", "images": 1e12, "float_nodes": []}',
                                  '{"rung": "minmax", "images": 256, "float_nodes": [1]}', "not json", "[]"])
def test_a_recipe_cnnpipe_does_not_make_is_refused_before_quantizing(text: str):
    """verify's re-export reads the recipe from model.json, which anyone who can write the store can change."""
    with pytest.raises(CnnpipeError, match="not one cnnpipe makes"):
        parse_recipe(ORT_INT8, text)
    assert parse_recipe(ORT_INT8, '{"rung": "entropy", "images": 64, "float_nodes": ["n"]}')[1:] == (64, ["n"])


@pytest.mark.parametrize("value", ["-1", "nan", "100.5"])
def test_bad_int8_limits_are_usage_errors(tmp_path: Path, value: str):
    proc = cnnpipe(tmp_path, "export", "lenet5", "--int8", "--max-int8-drop", value)
    assert_clean_error(proc, 2, "--max-int8-drop")
    assert list(tmp_path.iterdir()) == []


def test_int8_without_nncf_names_the_extra(tmp_path: Path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['nncf'] = None  # not installed\n")
    env = {"PYTHONPATH": str(shim)}
    root = tmp_path / "root"
    root.mkdir()
    proc = cnnpipe(root, "export", "lenet5", "--int8", env=env)
    assert_clean_error(proc, 2, "--int8 needs the nncf package", 'cnnpipe[int8]')
    assert list(root.iterdir()) == []


def test_calibration_batches_are_of_one_size_so_histogram_calibrators_take_any_count(pipeline_root: Path, tmp_path: Path):
    """120 training images (not a multiple of 32) through the Entropy calibrator: a ragged last batch made
    onnxruntime's histogram collector fail (``inhomogeneous shape``) in benchmarks/runtimes_cpu.py."""
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from cnnpipe.formats.onnx import CalibrationReader

    images = np.random.default_rng(0).standard_normal((120, 1, 28, 28)).astype(np.float32)
    sizes = {len(b["input"]) for b in CalibrationReader(images).batches}
    assert sizes == {30}
    quantize_static(str(pipeline_root / "exports/lenet5/v1/model.onnx"), str(tmp_path / "int8.onnx"),
                    CalibrationReader(images), quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.Entropy)
    assert (tmp_path / "int8.onnx").stat().st_size > 0
