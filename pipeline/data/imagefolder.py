"""A user's folder of images: ``PATH/<class>/*`` or ``PATH/{train,val,test}/<class>/*``."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import CnnpipeError
from .resize import in_threads, resize_image

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
MAX_PIXELS = 50_000_000  # an image over this (e.g. 7072x7072) is a bad image: decoding it would take ~150 MB or more
WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}  # more than 8 bits per sample
# Pillow warns on stderr about corrupt EXIF or large images; a file is either decoded or listed as bad, with
# the reason (set once for the process: warnings.catch_warnings is not thread-safe, and decoding runs in threads)
warnings.filterwarnings("ignore", module=r"PIL\.")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
SPLIT_DIRS = ("train", "val", "test")


@dataclass
class Scan:
    """What a folder holds: its layout, class names and the files per split (None: to be split)."""

    root: Path
    layout: str
    classes: list[str]
    files: dict[str | None, list[tuple[Path, int]]]


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _outside(path: Path, root: Path) -> bool:
    """Whether ``path`` (a symlink, or inside one) leads out of ``root``."""
    return not path.resolve().is_relative_to(root)


def _images(folder: Path, root: Path, follow_symlinks: bool) -> list[Path]:
    """The image files under ``folder``; one that leads outside ``root`` through a symlink is refused
    unless ``follow_symlinks``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=follow_symlinks):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix.lower() not in EXTENSIONS or not p.is_file():
                continue
            if not follow_symlinks and _outside(p, root):
                raise CnnpipeError(f"{p}: a symbolic link to a file outside {root}; move the image in, or pass "
                                   "--follow-symlinks if that is meant")
            found.append(p)
    return sorted(found)


def scan(path: Path, follow_symlinks: bool = False) -> Scan:
    """Find the classes and image files. ``train/`` and ``test/`` (and optionally ``val/``) mark a
    pre-split layout; any other mix of split folders, an empty class folder or a class folder that
    leads outside ``path`` (unless ``follow_symlinks``) is refused with the reason."""
    if not path.is_dir():
        raise CnnpipeError(f"{path}: no such folder; give a folder of class sub-folders of images")
    top = _class_dirs(path)
    splits = [s for s in SPLIT_DIRS if s in top]
    presplit = bool(splits)
    if presplit and ("train" not in splits or "test" not in splits or set(top) - set(SPLIT_DIRS)):
        others = sorted(set(top) - set(SPLIT_DIRS))
        raise CnnpipeError(
            f"{path}: holds {', '.join(s + '/' for s in splits)}" + (f" beside class folders {others}" if others else "")
            + "; a pre-split folder needs train/ and test/ (val/ is optional) and nothing else, or put the class "
            "folders at the top to have cnnpipe split them"
        )
    if presplit:
        classes = _class_dirs(path / "train")
        roots: dict[str | None, Path] = {s: path / s for s in splits}
    else:
        classes = top
        roots = {None: path}
    if len(classes) < 2:
        raise CnnpipeError(f"{path}: found {len(classes)} class folder(s); an image folder needs at least 2")
    root = path.resolve()
    files: dict[str | None, list[tuple[Path, int]]] = {}
    for split, folder in roots.items():
        extra = sorted(set(_class_dirs(folder)) - set(classes))
        if extra:
            raise CnnpipeError(f"{folder}: class folder(s) {extra} are not in {path / 'train'}")
        files[split] = []
        for i, c in enumerate(classes):
            if not (folder / c).is_dir():
                continue
            if not follow_symlinks and _outside(folder / c, root):
                raise CnnpipeError(f"{folder / c}: a symbolic link to a folder outside {path}; pass --follow-symlinks "
                                   "if that is meant")
            images = _images(folder / c, root, follow_symlinks)
            if not images:
                raise CnnpipeError(f"{folder / c}: an empty class folder (no {', '.join(sorted(EXTENSIONS))} files); "
                                   "add images or remove it")
            files[split] += [(f, i) for f in images]
    return Scan(path, "train/val/test folders" if presplit else "class folders", classes, files)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer images scaled to 8 bits (65535 -> 255), float images from [0, 1]
    (or from [0, max] when they exceed 1), instead of Pillow's clipping at 255."""
    arr = np.asarray(img)
    if img.mode == "F":
        top = float(np.nanmax(arr)) if arr.size else 1.0
        scaled = np.nan_to_num(arr, nan=0.0) * (255.0 / max(top, 1.0) if top > 1.0 else 255.0)
    else:  # I;16 (and its byte orders) or I: 16-bit ranges
        scaled = arr.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode any mode (L, RGB, RGBA, P, 16-bit, float, …) to uint8 C×size×size, upright by its
    EXIF orientation; an image over MAX_PIXELS is refused before it is decoded."""
    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} pixels is over the limit of {MAX_PIXELS:,} pixels")
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in WIDE_MODES:
            img = _to_8bit(img)
        img = img.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(resize_image(img, size), dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode(item: tuple[Path, int, int]) -> tuple[np.ndarray | None, str | None, str]:
    path, size, channels = item
    try:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        return load_image(path, size, channels), None, sha
    except Exception as e:  # noqa: BLE001 - a malformed file may make a decoder raise anything: an unreadable image
        return None, f"{path}: {type(e).__name__}: {e}", ""


@dataclass
class Decoded:
    """The readable images of a file list, their labels, paths and sha256s, and the failures."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    sha256: list[str]
    failures: list[str]


def decode_all(files: list[tuple[Path, int]], size: int, channels: int, workers: int | None = None) -> Decoded:
    """Decode every file in threads straight into one
    preallocated uint8 array, so the split is held once, not once per image and once stacked."""
    images = np.empty((len(files), channels, size, size), dtype=np.uint8)
    results: list[tuple[str | None, str]] = [(None, "")] * len(files)

    def one(i: int) -> None:
        image, error, sha = _decode((files[i][0], size, channels))
        if image is not None:
            images[i] = image
        results[i] = (error, sha)

    in_threads(len(files), one, workers)
    keep = [i for i, (error, _) in enumerate(results) if error is None]
    return Decoded(
        images=images if len(keep) == len(files) else images[keep],
        labels=np.array([files[i][1] for i in keep], dtype=np.int64),
        paths=[files[i][0] for i in keep],
        sha256=[results[i][1] for i in keep],
        failures=[error for error, _ in results if error is not None],
    )
