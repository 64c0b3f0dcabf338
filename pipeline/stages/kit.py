"""``cnnpipe kit``: a folder a deployer copies to the device to re-verify a bundle there.

The kit holds the chosen model files (byte for byte the bundle's), real test images as PNG files,
the exact input tensors cnnpipe's preprocessing makes from those files (predict's decoder, then the
bundle's normalization: conformance vectors for whoever writes client code), PyTorch's logits on
them (the source network rebuilt in a worker, as verify does), each format's tolerances, and
``check.py`` (``verification/kitcheck.py``), which needs numpy, Pillow and the runtime it checks.
The folder is written beside its target and renamed onto it when complete; it is signed with the
bundle's key when the bundle is signed.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.imagefolder import decode_all
from ..data.loading import load_dataset
from ..description import MODEL_JSON, read_bundle_json, read_description
from ..errors import CnnpipeError
from ..formats import FORMATS
from ..fs import fsync_dir, sha256_file, write_json
from ..options.commands import KIT_FORMATS, KitOptions
from ..progress import step
from ..store.version import SIGNATURE, Version
from ..store.workspace import Workspace
from ..verification.kitcheck import SIGNATURE as KIT_SIGNATURE
from ..verification.kitcheck import UNSIGNED as KIT_UNSIGNED
from ..verification.signing import Trust, check_signature, public_half, sign_tree
from ..verification.worker import Workers
from .predict import normalized
from .proof import source_model

KIT_SCHEMA = 1


@dataclass
class KitResult:
    """Where the kit was written and what it holds."""

    bundle: str
    model: str
    path: str
    formats: list[str]
    images: int
    signed: bool


def kit(bundle_ref: str, options: KitOptions, root: Path = Path("."), *, trust: Trust | None = None,
        trust_code: bool = False) -> KitResult:
    """Write the verification kit of ``bundle_ref`` into ``options.out`` (which must not exist)."""
    options.validate()
    ws = Workspace(root)
    bundle = ws.exports.resolve(bundle_ref)
    (trust or Trust()).admit(bundle)
    bundle.rehash()
    bundle_json = read_bundle_json(bundle)
    formats = _chosen(bundle, bundle_json, options)
    key = Path(options.sign_key) if options.sign_key else None
    _same_key(bundle, key)
    source = source_model(ws, bundle)
    source.rehash()
    desc = read_description(source)
    dataset = load_dataset(ws.data.resolve(desc.dataset_ref))
    images, labels = dataset.arrays("test", mmap=True)
    count = min(options.images, len(labels))
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        step(f"kit: {count} test images, {len(formats)} format(s)")
        files = _images(work, np.asarray(images[:count]), labels[:count], desc)
        inputs = _inputs(work, files, desc)
        with Workers() as workers:
            logits = workers.run(_reference, (source, work / "inputs.npy", trust_code), options.timeout,
                                 f"{source.ref}'s reference network", None)
        np.save(work / "logits.npy", logits.astype(np.float32), allow_pickle=False)
        records = _copy_formats(bundle, bundle_json, work, formats)
        shutil.copyfile(bundle.file(MODEL_JSON), work / MODEL_JSON)
        (work / "check.py").write_text(importlib.resources.files("cnnpipe.verification").joinpath("kitcheck.py").read_text())
        (work / "README.md").write_text(_readme(bundle, formats))
        _manifest(work, bundle, source, desc, records, files, labels[:count], inputs.shape)
        if key is not None:
            sign_tree(work, key, work / KIT_SIGNATURE, KIT_UNSIGNED)
        fsync_dir(work)
        os.rename(work, out)  # a kit appears whole or not at all
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return KitResult(bundle.ref, source.ref, str(out), formats, count, key is not None)


def _chosen(bundle: Version, bundle_json: dict[str, Any], options: KitOptions) -> list[str]:
    """The formats asked for (default: every one of the bundle that check.py runs), each in the bundle."""
    present = list(bundle_json.get("formats", []))
    if options.formats:
        missing = [f for f in options.formats if f not in present]
        if missing:
            raise CnnpipeError(f"{bundle.ref}: has no {missing[0]} format (it has {', '.join(present)})")
        return list(dict.fromkeys(options.formats))
    chosen = [f for f in present if f in KIT_FORMATS]
    if not chosen:
        raise CnnpipeError(f"{bundle.ref}: none of its formats runs without torch ({', '.join(present)}); a kit takes "
                           f"{', '.join(KIT_FORMATS)}")
    return chosen


def _same_key(bundle: Version, key: Path | None) -> None:
    """A signed bundle's kit is signed too, with the bundle's own key."""
    if not (bundle.path / SIGNATURE).is_file():
        return
    if key is None:
        raise CnnpipeError(f"{bundle.ref}: is signed, so its kit is signed too: give --sign-key KEY, the bundle's key")
    with tempfile.TemporaryDirectory() as tmp:
        public = Path(tmp) / "key.pub"
        public.write_bytes(public_half(key))
        try:
            check_signature(bundle, public)
        except CnnpipeError:
            raise CnnpipeError(f"{bundle.ref}: its signature does not verify with {key.name}'s public half: sign its kit "
                               "with the key that signed the bundle") from None


def _images(work: Path, images: np.ndarray, labels: np.ndarray, desc: Any) -> list[Path]:
    """The test images as lossless PNG files, named by index and class."""
    from PIL import Image

    folder = work / "images"
    folder.mkdir()
    files = []
    for i, (image, label) in enumerate(zip(images, labels)):
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(desc.classes[int(label)]))[:40]
        path = folder / f"{i:05d}-{name}.png"
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")
        files.append(path)
    return files


def _inputs(work: Path, files: list[Path], desc: Any) -> np.ndarray:
    """What cnnpipe's preprocessing (predict's decoder and the bundle's normalization) makes of each file."""
    inp = desc.input
    decoded = decode_all([(p, 0) for p in files], inp.height, inp.channels)
    if decoded.failures:
        raise CnnpipeError(f"kit: cannot read back an image it wrote ({decoded.failures[0]})")
    x = normalized(decoded.images, np.asarray(inp.mean, np.float32), np.asarray(inp.std, np.float32))
    np.save(work / "inputs.npy", x, allow_pickle=False)
    return x


def _reference(source: Version, inputs: Path, trust_code: bool) -> np.ndarray:
    """In a worker: the source network rebuilt, run on the kit's input tensors."""
    import torch

    from ..nets.modelfile import load_model

    model, _ = load_model(source, trust_code=trust_code)
    x = torch.from_numpy(np.load(inputs, allow_pickle=False))
    with torch.no_grad():
        return torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()


def _copy_formats(bundle: Version, bundle_json: dict[str, Any], work: Path, formats: list[str]) -> dict[str, dict[str, Any]]:
    """Each format's files copied from the bundle, and its record for kit.json."""
    variants = bundle_json.get("variants", {})
    records = {}
    (work / "model").mkdir()
    for name in formats:
        spec = FORMATS[name]
        for rel in spec.files:
            shutil.copyfile(bundle.file(rel), work / "model" / rel)
        tol = spec.tolerance("cpu")
        variant = variants.get(name, {}) if isinstance(variants, dict) else {}
        records[name] = {"runtime": spec.kit, "files": [f"model/{rel}" for rel in spec.files],
                         "tolerance": {"atol": tol.atol, "rtol": tol.rtol, "min_agreement": tol.min_agreement},
                         **({"precision": variant["precision"]} if isinstance(variant, dict) and "precision" in variant else {})}
    return records


def _manifest(work: Path, bundle: Version, source: Version, desc: Any, records: dict[str, dict[str, Any]],
              files: list[Path], labels: np.ndarray, shape: tuple[int, ...]) -> None:
    """kit.json: what the kit holds, the sha256 of every file, and how the input tensors were made."""
    inp = desc.input
    listed = sorted(p for p in work.rglob("*") if p.is_file())
    write_json(work / "kit.json", {
        "schema": KIT_SCHEMA, "bundle": bundle.ref, "bundle_manifest_sha256": bundle.manifest_sha256, "model": source.ref,
        "classes": list(desc.classes), "input": {"shape": list(shape[1:]), "layout": "NCHW", "dtype": "float32",
                                                 "mean": list(inp.mean), "std": list(inp.std)},
        "preprocessing": (f"decode, convert to {'grayscale (L)' if inp.channels == 1 else 'RGB'}, resize to "
                          f"{inp.height}x{inp.width} where the image is another size, scale 0-255 to 0-1, subtract "
                          f"mean {list(inp.mean)} and divide by std {list(inp.std)} per channel, C×H×W float32"),
        "images": [{"file": str(p.relative_to(work)), "label": int(y), "class": desc.classes[int(y)]}
                   for p, y in zip(files, labels)],
        "formats": records,
        "files": {str(p.relative_to(work)): sha256_file(p, fsync=True) for p in listed},
    })


def _readme(bundle: Version, formats: list[str]) -> str:
    return f"""# Verification kit of {bundle.ref}

Copy this folder to the device and run, with numpy, Pillow and the runtime of a format installed:

    python check.py                                  # every format whose runtime is importable here
    python check.py --format {formats[0]}
    python check.py --preprocess mymodule:preprocess # your preprocessing against inputs.npy
    python check.py --public-key cnnpipe-signing.pub # first refuse a kit changed since it was signed

Formats: {', '.join(formats)}. Exit 0: every format checked passed; 1: a format failed, or none
could be checked; 2: bad usage. `report.json` holds the figures. `images/` are real test images;
`inputs.npy` is what cnnpipe's preprocessing makes of them (kit.json says how); `logits.npy` is
what the PyTorch network answers on those inputs.
"""
