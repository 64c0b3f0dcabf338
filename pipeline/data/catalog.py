"""The datasets cnnpipe knows by name, and how each is prepared into a store version."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cnnpipe.data.idx import read_idx
from cnnpipe.data.split import stratified_split
from cnnpipe.errors import CnnpipeError


@dataclass(frozen=True)
class Prepared:
    """What preparing a dataset produced: uint8 NCHW images and int64 labels per split."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    source: dict[str, Any]
    split: dict[str, Any]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset cnnpipe can prepare by name."""

    name: str
    summary: str
    channels: int
    size: int
    classes: tuple[str, ...]
    flip: bool
    license: str
    prepare: Callable[[Path], Prepared]


MNIST_SAMPLE_FILES = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_SAMPLE_SIZES = {"val": 1000, "test": 2000, "train": 7000}
MNIST_SAMPLE_SEED = 0


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def prepare_mnist_sample(raw_dir: Path) -> Prepared:
    """Copy the shipped MNIST test split into ``raw_dir`` and split it 7,000/1,000/2,000."""
    shipped = resources.files("cnnpipe.data") / "mnist-sample"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for fname, md5 in MNIST_SAMPLE_FILES.items():
        target = raw_dir / fname
        target.write_bytes((shipped / fname).read_bytes())
        if _md5(target) != md5:
            raise CnnpipeError(
                f"{fname}: the copy shipped with cnnpipe is damaged (md5 mismatch); reinstall cnnpipe"
            )
    images = read_idx(raw_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(raw_dir / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    parts = stratified_split(labels, MNIST_SAMPLE_SIZES, MNIST_SAMPLE_SEED)
    images = images[:, None]  # N, 1, 28, 28
    return Prepared(
        splits={p: (images[idx], labels[idx]) for p, idx in parts.items()},
        classes=[str(d) for d in range(10)],
        source={
            "origin": "MNIST test split (t10k), shipped inside the cnnpipe package",
            "files": {f: {"md5": m} for f, m in MNIST_SAMPLE_FILES.items()},
        },
        split={
            "method": "stratified",
            "seed": MNIST_SAMPLE_SEED,
            "sizes": MNIST_SAMPLE_SIZES,
            "indices": {p: idx.tolist() for p, idx in parts.items()},
        },
    )


CATALOG: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="mnist-sample",
            summary="10,000 real MNIST digits (the official test split), split 7,000/1,000/2,000; offline",
            channels=1,
            size=28,
            classes=tuple(str(d) for d in range(10)),
            flip=False,
            license="CC BY-SA 3.0 (Yann LeCun, Corinna Cortes, Christopher Burges)",
            prepare=prepare_mnist_sample,
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    """The catalog entry for ``name``, or a usage error listing the known names."""
    try:
        return CATALOG[name]
    except KeyError:
        raise CnnpipeError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(CATALOG))}"
        ) from None
