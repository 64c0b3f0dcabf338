"""The format table: one record per format drives export, verify, bench, the card and the CLI;
every format fails the same way when its file is garbage, hostile or from another network."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import typer
from safetensors.torch import save_file

from cnnpipe.cli.app import app
from cnnpipe.description import InputSpec, ModelDescription
from cnnpipe.formats import BASE_FORMATS, FORMATS, VARIANT_FLAGS, load_snippets
from cnnpipe.nets.registry import build

from conftest import assert_clean_error, choices_of, cnnpipe, cnnpipe_here, cnnpipe_json, resign, tree_state


def test_the_table_is_consistent_and_the_cli_offers_its_formats():
    assert BASE_FORMATS[0] == "onnx"  # written first: its opset goes into every later file's metadata
    files = [rel for f in FORMATS.values() for rel in f.files]
    assert len(set(files)) == len(files)
    order = list(FORMATS)
    for spec in FORMATS.values():
        assert "cpu" in spec.tolerances and "cpu" in spec.devices
        assert (spec.parent is None) == (spec.flag is None), spec.name
        for source in (spec.parent, spec.needs):  # what a format is made from is written before it
            assert source is None or order.index(source) < order.index(spec.name)
    assert BASE_FORMATS.index("pt2") < BASE_FORMATS.index("torchscript") and FORMATS["torchscript"].legacy
    assert len(set(VARIANT_FLAGS)) == len(VARIANT_FLAGS) and [f for f in FORMATS.values() if f.native] == [FORMATS["pt2-aoti"]]
    export = typer.main.get_command(app).commands["export"]
    (fmt,) = [p for p in export.params if p.name == "formats"]
    assert choices_of(fmt) == [*BASE_FORMATS, "all"]
    assert {f"--{flag}" for flag in VARIANT_FLAGS} <= {o for p in export.params for o in p.opts}
    desc = ModelDescription("lenet5", "digits", 61706, tuple("0123456789"), InputSpec(1, 28, 28, (0.1,), (0.3,)), "d@v1", "h")
    snippets = "\n".join(load_snippets(desc))
    assert all(FORMATS[f].file in snippets for f in BASE_FORMATS) and "build_arch('lenet5', 1, 28, 10)" in snippets
    assert "from cnnpipe.nets.sources import build_arch" in snippets  # the snippet imports what a reader can import


def test_garbage_hostile_or_foreign_files_fail_their_row_and_verify_goes_on(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    (bundle / "model.torchscript.pt").write_bytes(b"PK\x03\x04 not a zip archive at all")
    other = build("cnn-small", 1, 28, 10).eval()  # another network, same input and classes
    program = torch.export.export(other, (torch.randn(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("b")},))
    meta = json.loads((bundle / "model.json").read_text())["metadata"]
    torch.export.save(program, str(bundle / "model.pt2"), extra_files={"cnnpipe.json": json.dumps(meta)})
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, bundle / "model.safetensors", metadata=meta)
    (bundle / "model.pte").write_bytes(b"\x00" * 64)
    (bundle / "model.ort").write_bytes(b"\x00\x00\x00\x00ORTM" * 8)
    weights = (bundle / "model.openvino.bin").read_bytes()
    (bundle / "model.openvino.bin").write_bytes(weights[: len(weights) // 2])  # truncated
    (bundle / "model.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 56)  # a flatbuffer header, nothing after
    (bundle / "model.ncnn.param").write_text("7767517\n2 2\nInput in0 0 1 in0\nNoSuchLayer l 1 1 in0 out0\n")
    (bundle / "model.mnn").write_bytes((bundle / "model.onnx").read_bytes()[:4096])  # another format's bytes
    for rel in ("model.torchscript.pt", "model.pt2", "model.safetensors", "model.pte", "model.ort", "model.openvino.bin",
                "model.tflite", "model.ncnn.param", "model.mnn"):
        resign(bundle, rel)

    proc = cnnpipe(root_copy, "verify", "lenet5", "--samples", "32", "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    rows = {r["format"]: r for r in report["formats"]}
    assert rows["onnx"]["passed"]  # the untouched format still runs and passes
    for fmt in ("torchscript", "pt2"):  # files that can run code and are not cnnpipe's re-export: never opened
        assert not rows[fmt]["passed"] and rows[fmt]["reasons"][0].startswith("unauthenticated: model."), rows[fmt]
    assert not rows["safetensors"]["passed"] and "do not fit the architecture" in rows["safetensors"]["reasons"][0]
    assert not rows["executorch"]["passed"] and "executorch (xnnpack) cannot load it" in rows["executorch"]["reasons"][0]
    assert not rows["ort"]["passed"] and "onnxruntime cannot load it" in rows["ort"]["reasons"][0]
    assert not rows["openvino"]["passed"] and "Incorrect weights in bin file" in rows["openvino"]["reasons"][0]
    for fmt in ("litert", "ncnn", "mnn"):
        assert not rows[fmt]["passed"] and f"{fmt} cannot load it" in rows[fmt]["reasons"][0], rows[fmt]
    assert proc.stderr.startswith("verify failed") and proc.stderr.count("\n") == 1  # no runtime logs
    assert Path(report["report_path"]).is_file()

    # bench, like verify: a failed row for each file its runtime refuses, the others timed
    proc = cnnpipe(root_copy, "bench", "lenet5", "--seconds", "0.05", "--batch-sizes", "1", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "runtime(s) failed" in proc.stderr
    timed = json.loads(proc.stdout)
    assert "executorch (cpu)" in timed["failed"] and "onnxruntime .ort (cpu)" in timed["failed"]
    for fmt in ("torchscript", "pt2"):  # bench loads no unproven file that can run code either
        assert timed["failed"][f"{FORMATS[fmt].bench_label} (cpu)"].startswith("unauthenticated: model."), timed
    assert "onnxruntime (cpu)" in {row["runtime"] for row in timed["rows"]}


def test_a_pt2_file_that_is_not_a_program_fails_its_row(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    (bundle / "model.pt2").write_bytes(b"\x00" * 64)
    resign(bundle, "model.pt2")
    proc = cnnpipe(root_copy, "verify", "lenet5", "--samples", "16", "--trust-native", "--json")  # loaded on trust
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (pt2,) = [r for r in json.loads(proc.stdout)["formats"] if r["format"] == "pt2"]
    assert not pt2["passed"] and "model.pt2: not a readable torch.export archive" in pt2["reasons"][0]


def test_a_malformed_model_description_is_one_line(root_copy: Path):
    for rel, command, code in (("exports/lenet5/v1", "verify", 1), ("models/lenet5/v1", "export", 2)):
        version = root_copy / rel
        (version / "model.json").write_text(json.dumps({"arch": "lenet5", "input": {"channels": "many"}}))
        resign(version, "model.json")
        proc = cnnpipe_here(root_copy, command, "lenet5", "--json")
        assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
        # a bundle's own model.json fails its verify (the reason in the report); a model's is a usage error
        assert "not a cnnpipe model description" in (json.loads(proc.stdout)["integrity"] if code == 1 else proc.stderr)


def test_a_format_whose_package_is_missing_names_its_extra(root_copy: Path, tmp_path: Path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in
                                           ("openvino", "executorch", "ai_edge_litert", "ncnn", "pnnx", "MNN")))
    without = {"PYTHONPATH": str(hide)}
    before = tree_state(root_copy / "exports")
    assert_clean_error(cnnpipe(root_copy, "export", "lenet5", "--format", "openvino", env=without), 2,
                       "the openvino format needs the openvino package", 'pip install "cnnpipe[openvino]"')
    assert_clean_error(cnnpipe(root_copy, "export", "lenet5", "--format", "onnx", "--format", "ncnn", env=without), 2,
                       "the ncnn format needs the ncnn package", 'pip install "cnnpipe[ncnn]"')
    assert tree_state(root_copy / "exports") == before  # nothing written

    exported = cnnpipe_json(root_copy, "export", "lenet5", env=without)  # all: what is installed
    assert "openvino" not in exported["formats"] and "executorch" not in exported["formats"]
    assert exported["not_installed"] == {"openvino": "openvino", "executorch": "executorch", "litert": "litert",
                                         "ncnn": "ncnn", "mnn": "mnn"}
    proc = cnnpipe(root_copy, "verify", "lenet5@v1", "--samples", "8", "--json", env=without)
    rows = {r["format"]: r for r in json.loads(proc.stdout)["formats"]}
    assert proc.returncode == 1 and rows["onnx"]["passed"]
    assert not rows["executorch"]["passed"] and 'cnnpipe[executorch]' in rows["executorch"]["reasons"][0]


def test_a_tampered_onnx_weight_fails_and_verify_names_the_first_layer_that_departs(root_copy: Path):
    from onnx import numpy_helper

    bundle = root_copy / "exports/lenet5/v1"
    graph = onnx.load(str(bundle / "model.onnx"))
    (weight,) = [t for t in graph.graph.initializer if t.name == "features.3.weight"]  # lenet5's second convolution
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 3.0
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(graph, str(bundle / "model.onnx"))
    resign(bundle, "model.onnx")  # the hashes pass: only the numbers can tell

    proc = cnnpipe(root_copy, "verify", "lenet5", "--samples", "64", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rows = {r["format"]: r for r in json.loads(proc.stdout)["formats"]}
    onnx_row = rows["onnx"]
    assert not onnx_row["passed"] and rows["pt2"]["passed"]
    first = onnx_row["localization"]["first_divergent"]
    assert (first["layer"], first["module"]) == ("features.3", "Conv2d")
    compared = [layer["layer"] for layer in onnx_row["localization"]["layers"]]
    assert compared.index("features.0") < compared.index("features.3")  # the layers before it agreed
    assert all(layer["relative"] < 1e-3 for layer in onnx_row["localization"]["layers"][: compared.index("features.3")])
    assert any("first layer that departs from PyTorch: features.3 (Conv2d" in r for r in onnx_row["reasons"])
    for key in ("mean_abs_diff", "median_abs_diff", "p99_abs_diff", "topk_agreement"):
        assert onnx_row[key] is not None and onnx_row["by_batch_size"]["1"][key] is not None
    assert onnx_row["nonfinite"] == 0 and onnx_row["bound_ratio"] > 1 >= rows["pt2"]["bound_ratio"]


def test_a_format_name_or_file_registered_twice_fails():
    from dataclasses import replace

    from cnnpipe.formats.base import REGISTRY, register

    before = dict(REGISTRY)
    with pytest.raises(ValueError, match="'onnx' is already registered"):
        register(FORMATS["onnx"])
    with pytest.raises(ValueError, match="writes a file of 'onnx'"):
        register(replace(FORMATS["onnx"], name="onnx-copy"))
    assert REGISTRY == before


def test_variant_flags_and_reexported_formats_come_from_the_records():
    from cnnpipe.formats import REEXPORTED
    from cnnpipe.options import ExportOptions

    assert set(ExportOptions().flags) == set(VARIANT_FLAGS)
    assert ExportOptions(int8=True).flags == {flag: flag == "int8" for flag in VARIANT_FLAGS}
    assert [f for f in FORMATS if FORMATS[f].reexported] == list(REEXPORTED)
    for name in REEXPORTED:  # a variant is made again only after its parent
        parent = FORMATS[name].parent
        assert parent is None or REEXPORTED.index(parent) < REEXPORTED.index(name)


def test_loading_the_executorch_runtime_leaves_its_export_toolchain_unimported():
    """executorch.runtime imports executorch.exir (torch._dynamo, seconds of every verify) for one
    warning class; cnnpipe's loader skips that, and a later real import of exir still works."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from cnnpipe.formats.executorch import runtime\n"
        "assert runtime().__name__ == 'Runtime'\n"
        "assert 'executorch.exir' not in sys.modules and 'torch._dynamo' not in sys.modules, 'exir was imported'\n"
        "from executorch.exir import to_edge_transform_and_lower\n"
        "import executorch.exir._warnings\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_xnnpack_patterns_that_cannot_match_are_skipped_and_the_program_is_the_same():
    """The operators ``xnnpack_patterns.ANCHORS`` names are in every real pattern of its pass (so a
    graph without them matches none), and lowering with the skip writes the same bytes as without."""
    import subprocess
    import sys

    script = (
        "import hashlib, importlib, json, torch\n"
        "from contextlib import nullcontext\n"
        "from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner\n"
        "from executorch.exir import to_edge_transform_and_lower\n"
        "from cnnpipe.formats.xnnpack_patterns import ANCHORS, PATTERNS, operators, unmatchable_patterns_skipped\n"
        "from cnnpipe.nets.registry import build\n"
        "missing = {}\n"
        "for name, (module, function, anchors) in ANCHORS.items():\n"
        "    for pattern in getattr(importlib.import_module(f'{PATTERNS}.{module}'), function)():\n"
        "        missing.setdefault(name, []).append(sorted(anchors - operators(pattern)))\n"
        "torch.manual_seed(0)\n"
        "program = torch.export.export(build('lenet5', 1, 28, 10).eval(), (torch.randn(2, 1, 28, 28),))\n"
        "digests = []\n"
        "for context in (nullcontext, unmatchable_patterns_skipped):\n"
        "    with context():\n"
        "        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])\n"
        "    digests.append(hashlib.sha256(lowered.to_executorch().buffer).hexdigest())\n"
        "print(json.dumps({'missing': missing, 'digests': digests}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.splitlines()[-1])
    assert set(found["missing"]) == {"ConvertToUpsampleBilinear2d", "ConvertToSDPAPass"}
    assert all(not anchors for patterns in found["missing"].values() for anchors in patterns), found["missing"]
    assert found["digests"][0] == found["digests"][1]


def test_a_pte_whose_lowering_fixed_the_batch_is_refused_naming_the_batch_size(tmp_path: Path):
    """ExecuTorch can plan a program for its example's batch only; export runs it at 1 and at its maximum first."""
    pytest.importorskip("executorch")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from cnnpipe.errors import CnnpipeError
    from cnnpipe.formats.executorch import PTE_MAX_BATCH, check_batches

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 26 * 26, 3)).eval()
    fixed = torch.export.export(net, (torch.zeros(PTE_MAX_BATCH, 1, 28, 28),))  # no dynamic batch axis
    buffer = to_edge_transform_and_lower(fixed, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    with pytest.raises(CnnpipeError, match="model.pte does not run at batch size 1 "):
        check_batches(buffer, torch.zeros(1, 1, 28, 28))


def test_a_runtime_that_fails_at_one_batch_size_names_it(tmp_path: Path):
    import numpy as np

    from cnnpipe.errors import CnnpipeError
    from cnnpipe.verification.worker import Images

    path = tmp_path / "x.npy"
    np.save(path, np.zeros((9, 1, 4, 4), np.uint8))

    def run(x: np.ndarray) -> np.ndarray:
        if len(x) == 7:
            raise RuntimeError("Expected batch 1")
        return np.zeros((len(x), 3), np.float32)

    data = Images(path, 9, (0.5,), (0.5,))
    assert data.logits(run, 2).shape == (9, 3)
    with pytest.raises(CnnpipeError, match="at batch size 7: RuntimeError: Expected batch 1"):
        data.logits(run, 7)
