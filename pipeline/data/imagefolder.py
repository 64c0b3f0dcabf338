"""A user's folder of images: ``PATH/<class>/*`` or split folders ``PATH/train/<class>/*`` beside ``val/``
(or ``valid/``, ``validation/``) and/or ``test/``."""

from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import CnnpipeError
from .resize import in_threads, resize_image

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}  # a GIF's first frame
MAX_PIXELS = 50_000_000  # an image over this (e.g. 7072x7072) is a bad image: decoding it would take ~150 MB or more
# The largest file such an image needs: 8 bytes a pixel (16-bit RGBA, uncompressed) and room for its headers.
MAX_IMAGE_BYTES = 8 * MAX_PIXELS + (1 << 20)
WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}  # more than 8 bits per sample
# Pillow warns on stderr about corrupt EXIF or large images; a file is either decoded or listed as bad, with
# the reason (set once for the process: warnings.catch_warnings is not thread-safe, and decoding runs in threads)
warnings.filterwarnings("ignore", module=r"PIL\.")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}  # folder -> split


@dataclass
class Scan:
    """What a folder holds: its layout, class names, the files per split (None: to be split), the folder
    each split was read from, and the files left out for not having an image extension."""

    root: Path
    layout: str
    classes: list[str]
    files: dict[str | None, list[tuple[Path, int]]]
    folders: dict[str, str]
    ignored: list[Path]


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _outside(path: Path, root: Path) -> bool:
    """Whether ``path`` (a symlink, or inside one) leads out of ``root``."""
    return not path.resolve().is_relative_to(root)


def _link_in(path: Path, folder: Path) -> Path:
    """The symbolic link on the way from ``folder`` to ``path`` (the outermost), or ``path`` itself."""
    for part in [*reversed(path.relative_to(folder).parents), path.relative_to(folder)]:
        if (folder / part).is_symlink():
            return folder / part
    return path


def _images(folder: Path, root: Path, follow_symlinks: bool) -> tuple[list[Path], list[Path]]:
    """The image files under ``folder`` (sub-folders and links to folders inside ``root`` included), and the
    files without an image extension; a link that leads outside ``root`` is refused, naming the link,
    unless ``follow_symlinks``. Hidden files and folders are not read."""
    found, ignored, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already read: a cycle
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith(".") or not p.is_file():
                continue
            if not follow_symlinks and _outside(p, root):
                raise CnnpipeError(f"{_link_in(p, folder)}: a symbolic link to outside {root}; move the images in, "
                                   "or pass --follow-symlinks if that is meant")
            (found if p.suffix.lower() in EXTENSIONS else ignored).append(p)
    return sorted(found), sorted(ignored)


def _split_folders(path: Path, top: list[str]) -> dict[str, str]:
    """The split each split folder at the top of ``path`` holds (``valid/`` is ``val``); a usage error for a
    mix that is not a layout (class folders beside split folders, two folders for one split, no train/)."""
    folders: dict[str, str] = {}
    for name in top:
        if name in SPLIT_DIRS:
            if SPLIT_DIRS[name] in folders:
                raise CnnpipeError(f"{path}: both {folders[SPLIT_DIRS[name]]}/ and {name}/ hold the "
                                   f"{SPLIT_DIRS[name]} split; keep one")
            folders[SPLIT_DIRS[name]] = name
    others = sorted(set(top) - set(SPLIT_DIRS))
    if folders and ("train" not in folders or len(folders) < 2 or others):
        raise CnnpipeError(
            f"{path}: holds {', '.join(f + '/' for f in folders.values())}"
            + (f" beside class folders {others}" if others else "")
            + "; a pre-split folder needs train/ and val/ (or valid/) or test/, and nothing else, or put the class "
            "folders at the top to have cnnpipe split them"
        )
    return folders


def _refuse_lookalikes(path: Path, classes: list[str]) -> None:
    """Two class folders whose names are equal after Unicode normalization and case folding (``café`` in
    NFC and NFD, ``Cat`` and ``cat``) would be separate classes that look the same everywhere: refused."""
    seen: dict[str, str] = {}
    for name in classes:
        key = unicodedata.normalize("NFKC", name).casefold()
        if key in seen:
            raise CnnpipeError(f"{path}: class folders {ascii(seen[key])} and {ascii(name)} differ only in Unicode form "
                               "or case; merge them into one folder (or rename one)")
        seen[key] = name


def scan(path: Path, follow_symlinks: bool = False) -> Scan:
    """Find the classes and image files. ``train/`` and ``test/`` (and optionally ``val/``) mark a
    pre-split layout; any other mix of split folders, an empty class folder or a class folder that
    leads outside ``path`` (unless ``follow_symlinks``) is refused with the reason."""
    if not path.is_dir():
        raise CnnpipeError(f"{path}: no such folder; give a folder of class sub-folders of images")
    top = _class_dirs(path)
    folders = _split_folders(path, top)
    presplit = bool(folders)
    if presplit:
        classes = _class_dirs(path / "train")
        roots: dict[str | None, Path] = {s: path / f for s, f in folders.items()}
    else:
        classes = top
        roots = {None: path}
    if len(classes) < 2:
        raise CnnpipeError(f"{path}: found {len(classes)} class folder(s); an image folder needs at least 2")
    _refuse_lookalikes(path, classes)
    root = path.resolve()
    files: dict[str | None, list[tuple[Path, int]]] = {}
    ignored: list[Path] = []
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
            images, others = _images(folder / c, root, follow_symlinks)
            ignored += others
            if not images:
                raise CnnpipeError(f"{folder / c}: an empty class folder (no {', '.join(sorted(EXTENSIONS))} files); "
                                   "add images or remove it")
            files[split] += [(f, i) for f in images]
    layout = "split folders " + " ".join(f + "/" for f in folders.values()) if presplit else "class folders"
    return Scan(path, layout, classes, files, folders, ignored)


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
    """One file's image, or why it is not one, and its sha256 (hashed as it streams: never held whole)."""
    path, size, channels = item
    try:
        nbytes = path.stat().st_size
        if nbytes > MAX_IMAGE_BYTES:
            raise ValueError(f"{nbytes:,} bytes is over the limit of {MAX_IMAGE_BYTES:,} bytes for an image file "
                             f"(images are at most {MAX_PIXELS:,} pixels)")
        with open(path, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
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
