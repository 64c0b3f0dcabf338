"""A generic guard: every kind of file cnnpipe reads, truncated, empty, 100 MB of zeros or of another
type (re-hashed where a manifest lists it), ends in one line with exit 1 or 2, within bounded memory,
and changes no file that was there."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import cnnpipe_here, cnnpipe_peak, resign

FORMAT_FILES = ("model.onnx", "model.pt2", "model.safetensors", "model.openvino.xml", "model.openvino.bin",
                "model.pte", "model.ort", "model.torchscript.pt", "model.tflite", "model.ncnn.param", "model.ncnn.bin",
                "model.mnn")
RUN = "models/lenet5/.runs/20260101T000000-00000000"
# kind -> (the file of that kind, the command that reads it)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bundle model.json": ("exports/lenet5/v1/model.json", ("verify", "lenet5", "--samples", "8")),
    "bundle manifest": ("exports/lenet5/v1/manifest.json", ("verify", "lenet5", "--samples", "8")),
    "bundle signature": ("exports/lenet5/v1/bundle.sig", ("verify", "lenet5", "--samples", "8", "--public-key", "k.pub")),
    "public key": ("k.pub", ("verify", "lenet5", "--samples", "8", "--public-key", "k.pub")),
    "weights": ("models/lenet5/v1/weights.safetensors", ("evaluate", "lenet5")),
    "model.json": ("models/lenet5/v1/model.json", ("evaluate", "lenet5")),
    "train.json": ("models/lenet5/v1/train.json", ("evaluate", "lenet5")),
    "dataset records": ("data/mnist-sample/v1/dataset.json", ("evaluate", "lenet5")),
    "test images": ("data/mnist-sample/v1/splits/test-images.npy", ("evaluate", "lenet5")),
    "test labels": ("data/mnist-sample/v1/splits/test-labels.npy", ("evaluate", "lenet5")),
    "evaluation metrics": ("models/lenet5/v1/eval/test/v1/metrics.json", ("export", "lenet5", "--format", "onnx")),
    "checkpoint": (f"{RUN}/checkpoint.pt", ("train", "--resume", "lenet5")),
    "image": ("digit.png", ("predict", "digit.png", "--bundle", "lenet5")),
    "options file": ("options.toml", ("evaluate", "lenet5", "--config", "options.toml")),
}


def _damage(path: Path, how: str, other: bytes) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "zeros":  # 100 MB of zeros, sparse on disk
        path.write_bytes(b"")
        with open(path, "r+b") as f:
            f.truncate(100 << 20)
    else:  # a file of another type
        path.write_bytes(other)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _rehash(root: Path, rel: str) -> None:
    """Re-hash the manifest that lists ``rel`` (a hostile writer would), unless it is the manifest."""
    for version in Path(rel).parents:
        if (root / version / "manifest.json").is_file() and Path(rel).name != "manifest.json":
            resign(root / version, str(Path(rel).relative_to(version)))
            return


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files that were there and changed, and new files other than verify's reports."""
    return sorted([k for k in before if after.get(k) != before[k]]
                  + [k for k in after if k not in before and "/verify/" not in k])


@pytest.fixture
def store(root_copy: Path) -> Path:
    """The shared pipeline's root, with the inputs the kinds above need beside it: an interrupted training
    run, an image, an options file and a public key."""
    run = root_copy / RUN
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"arch": "lenet5", "dataset": "mnist-sample", "name": "lenet5",
                                                 "epochs": 2}))
    (run / "checkpoint.pt").write_bytes((root_copy / "models/lenet5/v1/weights.safetensors").read_bytes())
    (root_copy / "digit.png").write_bytes((root_copy / "exports/lenet5/v1/confusion.png").read_bytes())
    (root_copy / "options.toml").write_text('split = "test"\n')
    assert cnnpipe_here(root_copy, "keygen", "--out", str(root_copy)).returncode == 0
    (root_copy / "cnnpipe-signing.pub").rename(root_copy / "k.pub")
    assert cnnpipe_here(root_copy, "sign", "lenet5", "--key", str(root_copy / "cnnpipe-signing.key")).returncode == 0
    return root_copy


@pytest.mark.parametrize("how", ["truncated", "empty", "zeros", "another type"])
def test_every_file_kind_damaged_is_one_line_bounded_and_changes_nothing(store: Path, how: str):
    other = (store / "exports/lenet5/v1/model.onnx").read_bytes()[:4096]  # another type: the start of an ONNX file
    failures = []
    for kind, (rel, args) in KINDS.items():
        if kind == "options file" and how == "empty":
            continue  # an empty options file is valid TOML: no options
        saved = (store / rel).read_bytes()
        manifests = {p: p.read_bytes() for p in store.rglob("manifest.json")}
        _damage(store / rel, how, other)
        _rehash(store, rel)
        before = _digests(store)
        proc = cnnpipe_here(store, *args)
        lines = proc.stderr.strip().splitlines()
        changed = _changed(before, _digests(store))
        if proc.returncode not in (1, 2) or len(lines) != 1 or "Traceback" in proc.stderr or changed:
            failures.append(f"{kind}: exit {proc.returncode}, {len(lines)} line(s): {proc.stderr.strip()[-300:]} "
                            f"changed {changed}")
        (store / rel).write_bytes(saved)
        for path, data in manifests.items():
            path.write_bytes(data)
    assert not failures, "\n".join(failures)


def test_every_export_format_damaged_fails_verify_within_bounded_memory(store: Path):
    """All formats at once, each truncated, 100 MB of zeros or a PNG in turn: one verify judges them all."""
    bundle = store / "exports/lenet5/v1"
    other = (bundle / "confusion.png").read_bytes()
    for i, name in enumerate(FORMAT_FILES):
        _damage(bundle / name, ("truncated", "zeros", "another type")[i % 3], other)
        resign(bundle, name)
    before = _digests(store)
    proc, peak = cnnpipe_peak(store, "verify", "lenet5", "--samples", "8", "--trust-native")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    report = json.loads(Path(proc.stderr.split("report: ")[1].split(")")[0]).read_text())
    assert not report["passed"] and len(report["formats"]) >= 7 and not any(r["passed"] for r in report["formats"])
    assert peak < 1.5 * 2**30, peak
    assert _changed(before, _digests(store)) == []
