"""Stage 1: fetch a dataset by name, or import a folder of images, into the data store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.catalog import CATALOG, FetchOptions, Prepared, get_spec, hold_out
from ..data.fetch import OnBytes
from ..data.imagefolder import EXTENSIONS, decode_all, scan
from ..data.loading import INFO, split_files
from ..data.resize import channel_stats, resize_split
from ..data.split import stratified_split
from ..errors import CnnpipeError
from ..evaluation.plots import plot_class_counts, plot_samples
from ..fs import dumps, sha256_file, write_json
from ..options.commands import DownloadOptions
from ..store.provenance import lineage
from ..store.version import Version
from ..store.workspace import Draft, Workspace


@dataclass
class DownloadResult:
    """The dataset version that now holds the data."""

    ref: str
    path: str
    dataset_hash: str
    reused: bool
    counts: dict[str, dict[str, int]]
    mean: list[float]
    std: list[float]
    skipped: list[str] = field(default_factory=list)
    splits_from: dict[str, str] = field(default_factory=dict)  # image folders: where each split's images came from
    ignored: list[str] = field(default_factory=list)  # image folders: files left out for their extension


def _content_hash(folder: Path) -> str:
    """sha256 over the sorted (path, sha256) pairs of every file: the dataset's identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _result(version: Version, reused: bool, skipped: list[str] | None = None, splits_from: dict[str, str] | None = None,
            ignored: list[str] | None = None) -> DownloadResult:
    r = version.results
    return DownloadResult(
        ref=version.ref, path=str(version.path), dataset_hash=r["dataset_hash"], reused=reused,
        counts=r["counts"], mean=r["mean"], std=r["std"], skipped=skipped or [], splits_from=splits_from or {},
        ignored=ignored or [],
    )


def _commit(
    draft: Draft, prepared: Prepared, info: dict[str, Any], config: dict[str, Any], plots: bool
) -> tuple[Version, bool]:
    """Write splits, description and plots into ``draft``; commit unless identical to the latest."""
    mean, std = channel_stats(prepared.splits["train"][0])
    classes = prepared.classes
    counts = {
        part: dict(zip(classes, map(int, np.bincount(prepared.splits[part][1], minlength=len(classes)))))
        for part in ("train", "val", "test")
        if part in prepared.splits
    }
    (draft.path / "splits").mkdir()
    for part, (x, y) in prepared.splits.items():
        images_rel, labels_rel = split_files(part)
        np.save(draft.path / images_rel, np.ascontiguousarray(x, dtype=np.uint8))
        np.save(draft.path / labels_rel, np.ascontiguousarray(y, dtype=np.int64))
    info = info | {"classes": classes, "mean": mean, "std": std, "counts": counts, "source": prepared.source}
    write_json(draft.path / INFO, info)
    (draft.path / "split.json").write_text(dumps(prepared.split) + "\n")
    if prepared.inventory is not None:
        (draft.path / "sources.json").write_text(dumps(prepared.inventory) + "\n")
    if plots:
        plot_samples(prepared.splits["train"], classes, draft.path / "samples.png", info["name"])
        plot_class_counts(counts, draft.path / "classes.png", info["name"])
    dataset_hash = _content_hash(draft.path)
    store = draft.store
    existing = store.versions(draft.name)
    if existing and existing[-1].results.get("dataset_hash") == dataset_hash:
        return store.get(draft.name, f"v{existing[-1].number}"), True  # its files too, on object storage
    roles = {
        INFO: "description", "split.json": "split", "sources.json": "inventory",
        "samples.png": "plot", "classes.png": "plot",
    }
    for p in draft.path.rglob("*"):
        rel = p.relative_to(draft.path).as_posix()
        if rel.startswith("splits/"):
            roles[rel] = "tensors"
        elif rel.startswith("raw/"):
            roles[rel] = "raw"
    version = draft.commit(
        stage="download",
        roles=roles,
        lineage=lineage([], config, seed=prepared.split.get("seed")),
        results={"dataset_hash": dataset_hash, "counts": counts, "mean": mean, "std": std},
    )
    return version, False


def download(
    name: str = "mnist-sample", options: DownloadOptions | None = None, root: Path = Path("."), on_bytes: OnBytes | None = None,
) -> DownloadResult:
    """Fetch dataset ``name`` (checksums checked whatever the source) into a new version.

    ``options.size`` resizes every image to ``size`` x ``size`` on import (bilinear), for networks
    made for larger inputs; the version's ``dataset.json`` records it. Without ``options.refresh``,
    an intact latest version made with the same options is reused without touching the
    network; an identical re-fetch also reuses it.
    """
    options = options or DownloadOptions()
    options.validate()
    spec = get_spec(name)
    size = options.size
    store = Workspace(root).data
    config: dict[str, Any] = {"name": name, "val_size": options.val_size, "seed": options.seed}
    if size is not None and size != spec.size:
        config["size"] = size
    if not options.refresh and store.has(name):
        latest = store.latest(name)
        if latest.manifest["lineage"].get("config") == config:
            latest.rehash()
            return _result(latest, reused=True)
    with store.draft(name) as draft:
        prepared = spec.prepare(draft.path / "raw", FetchOptions(options.mirror, options.val_size, options.seed, on_bytes))
        info = {
            "name": name, "summary": spec.summary, "license": spec.license,
            "channels": spec.channels, "height": spec.size, "width": spec.size, "augment": spec.augment,
        }
        if "size" in config:
            prepared.splits = {part: (resize_split(x, size), y) for part, (x, y) in prepared.splits.items()}
            padding = round(spec.augment["crop_padding"] * size / spec.size)
            info |= {"height": size, "width": size, "augment": spec.augment | {"crop_padding": padding},
                     "resized": {"from": spec.size, "to": size, "method": "bilinear (Pillow)"}}
        version, reused = _commit(draft, prepared, info, config, options.plots)
    return _result(version, reused)


def _folder_splits(decoded: dict[str | None, Any], folders: dict[str, str],
                   options: DownloadOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """The splits of a decoded folder and how they were made (``split.json``, whose ``from`` says where
    each split came from): stratified from one pool of images, or the folder's own split folders with
    test (or, with ``--test-from val``, validation) and then validation held out of train where missing."""
    if None in decoded:
        d = decoded[None]
        n = len(d.labels)
        n_test = round(n * options.test_fraction)
        n_val = round(n * options.val_fraction)
        parts = stratified_split(d.labels, {"val": n_val, "test": n_test, "train": n - n_val - n_test}, options.seed)
        splits = {p: (d.images[i], d.labels[i]) for p, i in parts.items() if len(i)}
        made = f"stratified from every class folder (seed {options.seed})"
        split = {"method": "stratified", "seed": options.seed, "sizes": {p: len(i) for p, i in parts.items()},
                 "indices": {p: i.tolist() for p, i in parts.items()}, "from": dict.fromkeys(splits, made)}
        return splits, split
    splits = {s: (d.images, d.labels) for s, d in decoded.items() if s is not None}
    came = {s: f"{f}/" for s, f in folders.items()}
    if options.test_from == "val" and "test" in splits:
        raise CnnpipeError(f"--test-from val: the folder has its own {folders['test']}/; drop --test-from")
    if options.test_from == "val" and "val" not in splits:
        raise CnnpipeError("--test-from val: the folder has no val/ (or valid/) folder")
    split: dict[str, Any] = {"method": "folders"}
    if "test" not in splits and options.test_from == "val":
        splits["test"] = splits.pop("val")
        came["test"] = came.pop("val")
    elif "test" not in splits:
        n_test = max(1, round(len(splits["train"][1]) * options.test_fraction))
        splits, held = hold_out(splits, n_test, options.seed, part="test", flag="--test-fraction")
        split |= {"test_indices_in_train": held["test_indices_in_train"]}
        came["test"] = f"held out of {folders['train']}/ ({n_test:,} images, stratified, seed {options.seed})"
    if "val" not in splits:
        n_val = max(1, round(len(splits["train"][1]) * options.val_fraction))
        splits, held = hold_out(splits, n_val, options.seed)
        split |= {"method": held["method"], "seed": options.seed, "val_indices_in_train": held["val_indices_in_train"]}
        came["val"] = f"held out of {folders['train']}/ ({n_val:,} images, stratified, seed {options.seed})"
    if len(splits["train"][1]) < len(decoded["train"].labels):
        came["train"] = f"{folders['train']}/ less the images held out"
    split |= {"sizes": {k: len(v[1]) for k, v in splits.items()}, "from": {k: came[k] for k in ("train", "val", "test")}}
    return splits, split


def import_folder(path: Path, options: DownloadOptions, root: Path = Path(".")) -> DownloadResult:
    """Import ``PATH/<class>/*`` (or ``PATH/{train,val,test}/<class>/*``) as dataset ``options.dataset_name``.

    Every image is decoded and checked before anything is written: unreadable files fail
    the import, naming them, unless ``options.skip_bad`` (then they are listed and left out).
    """
    options.validate_folder()
    name, size, channels = str(options.dataset_name), options.folder_size, options.channels
    if name in CATALOG:
        raise CnnpipeError(f"{name!r} is a standard dataset's name; choose another --name")
    found = scan(path.resolve(), options.follow_symlinks)
    decoded = {split: decode_all(files, size, channels) for split, files in found.files.items()}
    failures = [f for d in decoded.values() for f in d.failures]
    if failures and not options.skip_bad:
        shown = "; ".join(failures[:5]) + (f"; and {len(failures) - 5} more" if len(failures) > 5 else "")
        raise CnnpipeError(f"{len(failures)} unreadable image(s): {shown}. Fix or remove them, or pass --skip-bad")
    sources = {
        split or "all": {str(p.relative_to(found.root)): sha for p, sha in zip(d.paths, d.sha256)}
        for split, d in decoded.items()
    }
    splits, split = _folder_splits(decoded, found.folders, options)
    for part, (_, y) in splits.items():
        if len(y) == 0:
            raise CnnpipeError(f"{path}: the {part} split has no readable images")
    prepared = Prepared(splits=splits, classes=found.classes, split=split, inventory={"sha256_by_split": sources},
                        source={"path": str(path.resolve()), "layout": found.layout, "skipped": failures})
    config = {"name": name, "path": str(path.resolve()), "size": size, "channels": channels,
              "val_fraction": options.val_fraction, "test_fraction": options.test_fraction, "seed": options.seed,
              "skip_bad": options.skip_bad} | ({"test_from": "val"} if options.test_from == "val" else {})
    info = {
        "name": name, "summary": f"image folder {path.name} ({found.layout})", "license": "the folder owner's",
        "channels": channels, "height": size, "width": size,
        "augment": {"crop_padding": max(1, size // 8), "flip": options.flip},
    }
    with Workspace(root).data.draft(name) as draft:
        version, reused = _commit(draft, prepared, info, config, options.plots)
    ignored = [f"{p.relative_to(found.root)}: not an image extension cnnpipe reads ({', '.join(sorted(EXTENSIONS))})"
               for p in found.ignored]
    return _result(version, reused, failures, split["from"], ignored)
