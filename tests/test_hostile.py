"""Hostile and broken input: one test per row of the README's table (the rows tested elsewhere say where).

Where a test swaps a file inside a version it also re-signs the manifest, so the
defence under test is the loader itself, not the sha256 check in front of it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx.external_data_helper import set_external_data

from conftest import assert_clean_error, cli_env, cnnpipe, cnnpipe_here, resign, tree_state, zip_bomb


class RunsCode:
    """A pickle that creates a marker file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_offered_as_weights_is_refused(root_copy: Path, tmp_path: Path):
    # (The same as a checkpoint: test_training.py::test_a_hostile_checkpoint_is_refused.)
    marker = tmp_path / "pwned"
    version = root_copy / "models/lenet5/v1"
    (version / "weights.safetensors").write_bytes(pickle.dumps(RunsCode(marker)))
    resign(version, "weights.safetensors")
    before = tree_state(root_copy)
    assert_clean_error(cnnpipe_here(root_copy, "evaluate", "lenet5"), 2, "not a readable safetensors weights file")
    assert not marker.exists() and tree_state(root_copy) == before


@pytest.mark.parametrize("header", ["oversized", "malformed"])
def test_a_safetensors_file_with_a_bad_header_is_refused(root_copy: Path, header: str):
    version = root_copy / "models/lenet5/v1"
    body = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}' + b"\0" * 4
    data = struct.pack("<Q", 1 << 40) + body if header == "oversized" else struct.pack("<Q", 12) + b"{not json!!}"
    (version / "weights.safetensors").write_bytes(data)
    resign(version, "weights.safetensors")
    before = tree_state(root_copy)
    for command in (["evaluate", "lenet5"], ["export", "lenet5"]):
        assert_clean_error(cnnpipe_here(root_copy, *command), 2, "not a readable safetensors weights file")
    assert tree_state(root_copy) == before


def test_an_onnx_file_with_external_data_outside_its_folder_is_refused(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    proto = onnx.load(str(bundle / "model.onnx"))
    set_external_data(proto.graph.initializer[0], location="../../../../../../etc/passwd")
    proto.graph.initializer[0].ClearField("raw_data")
    onnx.save(proto, str(bundle / "model.onnx"))
    resign(bundle, "model.onnx")
    verify = cnnpipe(root_copy, "verify", "lenet5", "--json")
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    onnx_report = next(f for f in json.loads(verify.stdout)["formats"] if f["format"] == "onnx")
    assert "points to external data" in onnx_report["reasons"][0]
    digit = root_copy / "digit.png"
    digit.write_bytes((bundle / "confusion.png").read_bytes())
    assert_clean_error(cnnpipe_here(root_copy, "predict", str(digit), "--bundle", "lenet5"), 2, "cannot load it")


@pytest.mark.parametrize("name", ["../up", "a/b", "tab\there", "bell\x07", "nul\x01", "trailing\n"])
def test_names_with_dots_slashes_or_control_characters_are_refused(root_copy: Path, name: str):
    before = tree_state(root_copy)
    assert_clean_error(cnnpipe_here(root_copy, "train", "--name", name, "--epochs", "1"), 2, "invalid model name")
    assert_clean_error(cnnpipe_here(root_copy, "evaluate", f"{name}@v1"), 2)
    assert tree_state(root_copy) == before


def test_a_symlink_in_a_store_pointing_outside_is_refused(root_copy: Path, tmp_path: Path):
    outside = tmp_path / "outside.safetensors"
    weights = root_copy / "models/lenet5/v1/weights.safetensors"
    outside.write_bytes(weights.read_bytes())
    weights.unlink()
    weights.symlink_to(outside)  # same bytes, same hash: only the link is wrong
    assert_clean_error(cnnpipe_here(root_copy, "evaluate", "lenet5"), 2, "is a symbolic link")
    (root_copy / "models/evil").mkdir()
    (root_copy / "models/evil/v1").symlink_to(root_copy / "models/lenet5/v1")
    (root_copy / "models/evil/latest").write_text("v1\n")
    assert_clean_error(cnnpipe_here(root_copy, "evaluate", "evil"), 2, "evil@v1 does not exist")


def test_predict_refuses_a_bundle_whose_graph_and_metadata_disagree_on_the_input(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    proto = onnx.load(str(bundle / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "input_shape":
            prop.value = "[3, 28, 28]"
    onnx.save(proto, str(bundle / "model.onnx"))
    resign(bundle, "model.onnx")
    digit = root_copy / "digit.png"
    digit.write_bytes((bundle / "confusion.png").read_bytes())
    assert_clean_error(
        cnnpipe(root_copy, "predict", str(digit), "--bundle", "lenet5"), 2, "the graph takes input [1, 28, 28]"
    )


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(root_copy: Path, tmp_path: Path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import errno, os\n"
        "def _full(fd):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "os.fsync = _full\n"
    )
    before = tree_state(root_copy)
    proc = subprocess.run(
        [sys.executable, "-m", "cnnpipe", "--root", str(root_copy), "export", "lenet5"],
        env=cli_env() | {"PYTHONPATH": str(hooks)}, capture_output=True, text=True, timeout=300,
    )
    assert_clean_error(proc, 2, "cannot write: No space left on device", "nothing partial was kept")
    assert tree_state(root_copy) == before


# Rows tested elsewhere:
#   truncated or zero-byte weights   test_cli.py::test_corrupt_weights_are_refused_by_name
#   a changed byte in a bundle       test_cli.py::test_verify_fails_closed_on_a_breach_and_on_a_changed_file
#   an image that is not an image    test_bundle.py::test_predict_refuses_bad_images_in_one_line,
#                                    test_imagefolder.py::test_a_corrupt_image_fails_the_import_by_path_and_writes_nothing
#   NaN loss                         test_cli.py::test_a_failed_stage_leaves_no_version_behind
#   a pickled checkpoint             test_training.py::test_a_hostile_checkpoint_is_refused


@pytest.mark.parametrize(("args", "flag"), [
    (("train", "--weight-decay", "inf"), "--weight-decay"),  # committed NaN weights before
    (("train", "--momentum", "nan"), "--momentum"),
    (("run", "--min-accuracy", "nan"), "--min-accuracy"),
    (("verify", "lenet5", "--rtol", "nan"), "--rtol"),
    (("bench", "lenet5", "--seconds", "inf"), "--seconds"),
])
def test_nan_or_infinity_in_a_numeric_option_is_refused(pipeline_root: Path, args: tuple[str, ...], flag: str):
    before = {store: tree_state(pipeline_root / store) for store in ("models", "exports")}
    assert_clean_error(cnnpipe_here(pipeline_root, *args), 2, f"{flag} must be a finite number")
    assert {store: tree_state(pipeline_root / store) for store in ("models", "exports")} == before


def test_every_json_file_cnnpipe_writes_is_strict_json(pipeline_root: Path):
    from cnnpipe.fs import dumps

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    files = [*pipeline_root.rglob("*.json"), *pipeline_root.rglob("*.jsonl")]
    assert len(files) > 10
    for path in files:
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(line, parse_constant=refuse)
    assert dumps({"loss": float("nan"), "bound": [float("inf"), 1.5]}) == '{"loss": null, "bound": [null, 1.5]}'


@pytest.mark.parametrize(("args", "message"), [
    (("--samples", "0"), "--samples must be at least 1"),
    (("--providers", "tpu"), "unknown provider 'tpu'"),
    (("--format", "ort"), "add --format onnx"),
    (("--fp16", "--format", "pt2"), "--fp16 derives from the onnx or openvino file"),
])
def test_run_checks_every_stage_before_its_first_stage_writes(tmp_path: Path, args: tuple[str, ...], message: str):
    assert_clean_error(cnnpipe_here(tmp_path, "run", *args), 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no dataset, model or bundle was written


def test_class_names_with_separators_markup_or_newlines_are_shown_as_they_are(tmp_path: Path):
    from test_imagefolder import _make_folder

    classes = ("a|b", "[bold]x", "line\nbreak")
    _make_folder(tmp_path / "odd", classes=classes, per_class=10)
    cnnpipe(tmp_path, "download", "imagefolder", str(tmp_path / "odd"), "--name", "odd", "--size", "16", "--no-plots")
    assert cnnpipe(tmp_path, "train", "--dataset", "odd", "--model", "cnn-small", "--epochs", "1").returncode == 0
    proc = cnnpipe(tmp_path, "evaluate", "cnn-small")
    assert proc.returncode == 0, proc.stderr
    assert "[bold]x" in proc.stdout and "line\\nbreak" in proc.stdout  # no markup applied, the newline shown escaped
    card = next((tmp_path / "models/cnn-small/v1/eval/test").rglob("README.md")).read_text()
    rows = [line for line in card.splitlines() if line.startswith("| a") or line.startswith("| line")]
    assert any(line.startswith("| a\\|b |") for line in rows)  # Markdown's escaped pipe: the row keeps its columns
    assert any(line.startswith("| line\\\\nbreak |") for line in rows)  # shows as line\nbreak, on one row
    assert "| \\[bold\\]x |" in card


@pytest.mark.parametrize(("args", "message"), [
    (("train", "--seed", "99999999999999999999999"), "--seed must be between 0 and 2^63-1"),  # was an overflow, exit 3
    (("train", "--seed", "-1"), "--seed must be between 0 and 2^63-1"),
    (("download", "--seed", "-1"), "--seed must be between 0 and 2^63-1"),
    (("train", "--epochs", "99999999999"), "--epochs must be between 1 and 100,000"),
    (("bench", "lenet5", "--threads", "-3"), "--threads must be between 0"),  # was torch's RuntimeError, exit 3
])
def test_numbers_out_of_range_are_one_line(pipeline_root: Path, args: tuple[str, ...], message: str):
    before = {store: tree_state(pipeline_root / store) for store in ("models", "exports")}
    assert_clean_error(cnnpipe_here(pipeline_root, *args), 2, message)
    assert {store: tree_state(pipeline_root / store) for store in ("models", "exports")} == before


def test_a_root_that_is_a_file_is_one_line(tmp_path: Path):
    (tmp_path / "file").write_text("not a folder")
    for command in (("ls",), ("train",), ("verify", "lenet5")):
        assert_clean_error(cnnpipe_here(tmp_path, "--root", str(tmp_path / "file"), *command), 2, "is a file, not a folder")


def test_a_resume_checkpoint_with_missing_or_mistyped_fields_is_refused(root_copy: Path):
    import torch

    run = root_copy / "models/lenet5/.runs/broken"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"arch": "lenet5", "dataset": "mnist-sample", "epochs": 2, "name": "lenet5"}))
    for checkpoint in ({"epoch": 1}, {"model": {}, "epoch": "one"}, [1, 2, 3]):
        torch.save(checkpoint, run / "checkpoint.pt")
        before = tree_state(root_copy / "models/lenet5")
        proc = cnnpipe(root_copy, "train", "--resume", str(run))
        assert_clean_error(proc, 2, "cannot")
        assert tree_state(root_copy / "models/lenet5") == before


SECRET = "TOP-SECRET-CONTENT"


@pytest.mark.parametrize("pointer", ["binary", "huge", "fifo", "symlink", "text"])
def test_a_hostile_latest_pointer_is_one_line_and_never_echoed(root_copy: Path, tmp_path: Path, pointer: str):
    latest = root_copy / "models/lenet5/latest"
    latest.unlink()
    if pointer == "binary":
        latest.write_bytes(b"\x00\xff" + SECRET.encode())
    elif pointer == "huge":
        latest.write_text(SECRET * 100_000)
    elif pointer == "fifo":
        os.mkfifo(latest)  # reading it would block forever
    elif pointer == "symlink":
        (tmp_path / "elsewhere").write_text("v1")
        latest.symlink_to(tmp_path / "elsewhere")
    else:
        latest.write_text(f"v1 {SECRET}")
    proc = cnnpipe(root_copy, "evaluate", "lenet5", timeout=120)
    assert_clean_error(proc, 2)
    assert SECRET not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("manifest", [
    [1, 2, 3], {"schema": 1}, "text", {"files": "all of them"},
])
def test_a_manifest_of_the_wrong_shape_is_one_line_and_ls_lists_it_as_damaged(root_copy: Path, manifest: object):
    path = root_copy / "models/lenet5/v1/manifest.json"
    good = json.loads(path.read_text())
    if isinstance(manifest, dict) and "files" in manifest:
        manifest = good | manifest
    path.write_text(json.dumps(manifest))
    assert_clean_error(cnnpipe_here(root_copy, "evaluate", "lenet5@v1"), 2, "corrupt manifest")
    listed = cnnpipe(root_copy, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    stores = json.loads(listed.stdout)
    assert "corrupt manifest" in stores["models"]["lenet5"][0]["damaged"]
    assert stores["exports"]["lenet5"][0]["version"] == 1 and "damaged" not in stores["exports"]["lenet5"][0]


@pytest.mark.parametrize(("command", "folder"), [("evaluate", "models/lenet5/v1/eval"), ("verify", "exports/lenet5/v1/verify")])
def test_a_symlinked_folder_inside_a_version_is_never_written_through(root_copy: Path, tmp_path: Path, command: str,
                                                                      folder: str):
    inside = root_copy / folder
    if inside.exists():
        shutil.rmtree(inside)
    target = tmp_path / "target"
    target.mkdir()
    inside.symlink_to(target)
    args = ("--samples", "8") if command == "verify" else ()
    assert_clean_error(cnnpipe_here(root_copy, command, "lenet5", *args), 2, "is a symbolic link")
    assert list(target.iterdir()) == []


def test_batch_sizes_are_bounded_by_a_limit_and_by_the_memory_their_inputs_need(pipeline_root: Path, monkeypatch):
    assert_clean_error(cnnpipe_here(pipeline_root, "bench", "lenet5", "--batch-sizes", "1,10000000000"), 2,
                       "--batch-sizes must be between 1 and 1,048,576, not 10,000,000,000")
    assert_clean_error(cnnpipe_here(pipeline_root, "evaluate", "lenet5", "--batch-size", "0"), 2,
                       "--batch-size must be between 1 and 1,048,576")
    from cnnpipe.options import fields

    monkeypatch.setattr(fields, "available_memory", lambda: 2**30)  # a machine with 1 GiB left
    for args in (("bench", "lenet5", "--batch-sizes", "1,100000"), ("verify", "lenet5", "--batch-sizes", "100000", "--full")):
        proc = cnnpipe_here(pipeline_root, *args)
        assert_clean_error(proc, 2, "100,000 needs about 2.3 GiB for 1x28x28 inputs", "use at most 42,799")
    fields.check_batch_memory(min(100000, 512), (1, 28, 28), "--batch-sizes")  # a batch holds at most the images there are


def test_class_folders_equal_after_unicode_normalization_or_case_folding_are_refused(tmp_path: Path):
    import unicodedata

    from PIL import Image

    for pair in (("café", unicodedata.normalize("NFD", "café")), ("Cat", "cat")):
        src = tmp_path / pair[1].encode("unicode_escape").decode()
        for name in pair:
            (src / name).mkdir(parents=True)
            Image.new("L", (8, 8)).save(src / name / "0.png")
        proc = cnnpipe_here(tmp_path, "download", "imagefolder", str(src), "--name", "pets")
        assert_clean_error(proc, 2, "differ only in Unicode form or case", ascii(sorted(pair)[0]), ascii(sorted(pair)[1]))
    assert not (tmp_path / "data").exists()


def test_root_messages_name_the_problem_and_escape_control_characters(tmp_path: Path):
    assert_clean_error(cnnpipe_here(tmp_path, "ls", "--root", "s3://"), 2, "s3:// needs a bucket: s3://bucket/prefix")
    from_env = subprocess.run([sys.executable, "-m", "cnnpipe", "ls"], cwd=tmp_path, env=cli_env() | {"CNNPIPE_ROOT": "s3://"},
                              capture_output=True, text=True, timeout=120)
    assert_clean_error(from_env, 2, "s3:// needs a bucket")
    proc = cnnpipe_here(tmp_path, "ls", "--root", str(tmp_path / "a\nb"))
    assert_clean_error(proc, 2, "a\\nb: no such folder")
    assert len(proc.stderr.strip().splitlines()) == 1


_FIELDS = {  # model.json field -> a value of the wrong type, with the words the refusal names it by
    "triton": (["QUOTED-config.pbtxt"], "'triton' is not an empty list or [config, model] file names"),
    "variants": ([1], "'variants' is not a table of records by format"),
    "formats": (5, "'formats' is not a list of format names"),
    "classes": ("QUOTED-classes", "'classes' is not a list of names"),
    "dataset": ([], "'dataset' is not an object"),
}


def test_model_json_fields_of_the_wrong_type_fail_verify_and_refuse_bench_naming_the_field(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    good = (bundle / "model.json").read_text()
    for key, (value, words) in _FIELDS.items():
        (bundle / "model.json").write_text(json.dumps(json.loads(good) | {key: value}))
        resign(bundle, "model.json")
        refused = cnnpipe_here(root_copy, "bench", "lenet5", "--seconds", "0.1")
        assert_clean_error(refused, 2, words)
        assert "QUOTED" not in refused.stderr
        if key in ("formats", "classes"):  # verify: one field of the export's records, one of the description
            proc = cnnpipe_here(root_copy, "verify", "lenet5", "--samples", "8")
            assert_clean_error(proc, 1, "verify failed")
            report = json.loads(Path(proc.stderr.split("report: ")[1].split(")")[0]).read_text())
            assert not report["passed"] and words in report["integrity"] and not report["formats"], key
            assert "QUOTED" not in proc.stderr + report["integrity"]


@pytest.mark.parametrize(("change", "words"), [
    (lambda m: m["lineage"].__setitem__("parents", "lenet5@v1"), "lineage.parents is not a list"),
    (lambda m: m["lineage"].__setitem__("parents", [{"ref": 5, "manifest_sha256": 3}]), "lineage.parents is not a list"),
    (lambda m: m["lineage"].__setitem__("config", []), "lineage.config is not an object"),
    (lambda m: m["lineage"]["config"].__setitem__("evaluation", {"split": 1}), "lineage.config.evaluation is not a"),
    (lambda m: m["results"].__setitem__("formats", 7), "results.formats is not a list"),
    (lambda m: m["files"][0].__setitem__("role", 4), "files[0] is not a {path, sha256, bytes, role} record"),
])
def test_manifest_records_of_the_wrong_shape_are_one_line(root_copy: Path, change, words: str):
    path = root_copy / "exports/lenet5/v1/manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    before = tree_state(root_copy)
    for args in (("verify", "lenet5", "--samples", "8"), ("bench", "lenet5"), ("show", "lenet5", "--store", "exports")):
        assert_clean_error(cnnpipe_here(root_copy, *args), 2, "corrupt manifest", words)
    assert tree_state(root_copy) == before


# ONNX metadata key, its hostile value (None: removed), the words of the refusal
_METADATA = [
    ("input_shape", None, "its metadata 'input_shape' is missing or not [channels, height, width]"),
    ("input_shape", "[28, 28]", "its metadata 'input_shape' is missing or not [channels, height, width]"),
    ("classes", '["0", "1"]', "the graph answers 10 scores but its metadata names 2 classes"),
    ("classes", '{"0": 0}', "its metadata 'classes' is missing or not a list of class names"),
    ("mean", "[]", "its metadata 'mean' is missing or not 1 finite number"),
    ("mean", "[NaN]", "its metadata 'mean' is missing or not 1 finite number"),
    ("std", "[0]", "its metadata 'std' is missing or not 1 positive number"),
    ("input_name", "QUOTED", "its metadata 'input_name' is missing or not the graph's input name"),
]


def test_predict_refuses_hostile_onnx_metadata_in_one_line(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    good = onnx.load(str(bundle / "model.onnx"))
    digit = root_copy / "digit.png"
    digit.write_bytes((bundle / "confusion.png").read_bytes())
    for key, value, words in _METADATA:
        proto = onnx.ModelProto()
        proto.CopyFrom(good)
        kept = [p for p in proto.metadata_props if p.key != key]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        if value is not None:
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(bundle / "model.onnx"))
        resign(bundle, "model.onnx")
        proc = cnnpipe_here(root_copy, "predict", str(digit), "--bundle", "lenet5")
        assert_clean_error(proc, 2, words)
        assert "QUOTED" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_archives_whose_members_declare_more_than_they_could_hold_are_refused_unread(root_copy: Path):
    """A zip bomb in place of a referenced weight: torch's reader would allocate what the member declares."""
    bundle = root_copy / "exports/lenet5/v1"
    for name, member in (("model.pt2", "/data/weights/weight_0"), ("model.torchscript.pt", "/data/0")):
        zip_bomb(bundle / name, member, 256)
        resign(bundle, name)
    proc = cnnpipe_here(root_copy, "verify", "lenet5", "--samples", "8", "--trust-native")
    assert_clean_error(proc, 1, "verify failed")
    report = json.loads(Path(proc.stderr.split("report: ")[1].split(")")[0]).read_text())
    reasons = {r["format"]: r["reasons"][0] for r in report["formats"] if not r["passed"]}
    assert set(reasons) == {"pt2", "torchscript"}
    for name in ("model.pt2", "model.torchscript.pt"):
        fmt = "pt2" if name == "model.pt2" else "torchscript"
        assert f"{name}: its members declare 268," in reasons[fmt] and "(a zip bomb); refused unread" in reasons[fmt]


def test_a_huge_file_named_like_an_image_is_refused_by_its_size_before_it_is_read(root_copy: Path, tmp_path: Path):
    from conftest import cnnpipe_peak

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:  # sparse: 3 GB that take no disk
        f.truncate(3 << 30)
    proc, peak = cnnpipe_peak(root_copy, "predict", str(huge), "--bundle", "lenet5")
    assert_clean_error(proc, 2, "huge.png: ValueError: 3,221,225,472 bytes is over the limit of 401,048,576 bytes")
    assert peak < 400 << 20, peak  # before: the whole file in memory (3.2 GB)

    folder = tmp_path / "folder"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(4):
            (folder / c / f"{i}.png").write_bytes((root_copy / "exports/lenet5/v1/confusion.png").read_bytes())
    (folder / "a" / "huge.png").hardlink_to(huge)
    before = tree_state(root_copy)
    proc, peak = cnnpipe_peak(root_copy, "download", "imagefolder", str(folder), "--name", "bomb", "--skip-bad",
                              "--no-plots", "--json")
    assert proc.returncode == 0, proc.stderr
    skipped = json.loads(proc.stdout)["skipped"]
    assert len(skipped) == 1 and "huge.png" in skipped[0] and "over the limit" in skipped[0]
    assert peak < 1 << 30, peak  # before: 2.2 GB
    assert set(tree_state(root_copy)) - set(before)  # the import itself was written
