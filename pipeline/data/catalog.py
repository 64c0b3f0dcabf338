"""The datasets cnnpipe knows by name, and how each is fetched into a store version."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnpipeError
from .cifar import read_cifar10
from .fetch import OnBytes, fetch, sources
from .idx import read_idx
from .split import stratified_split


@dataclass
class Prepared:
    """What preparing a dataset produced: uint8 N×C×H×W images and int64 labels per split."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    source: dict[str, Any]
    split: dict[str, Any]
    inventory: dict[str, Any] | None = None


@dataclass
class FetchOptions:
    """How to fetch: from where, and how to hold out the validation split."""

    mirror: str | None = None
    val_size: int | None = None
    seed: int = 0
    on_bytes: OnBytes | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset cnnpipe can prepare by name; its input shape is known without fetching it."""

    name: str
    summary: str
    channels: int
    size: int
    classes: tuple[str, ...]
    augment: dict[str, Any]
    license: str
    prepare: Callable[[Path, FetchOptions], Prepared]
    hub_id: str | None = None  # the dataset's id on the Hugging Face Hub, for model cards


def hold_out(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], val_size: int, seed: int, part: str = "val", flag: str = "--val-size",
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Move a seeded, stratified ``val_size`` hold-out of ``train`` into ``part``; record the split."""
    x, y = splits["train"]
    if not 0 < val_size < len(y):
        raise CnnpipeError(f"{flag} must leave between 1 and {len(y) - 1} images (the training split), not {val_size}")
    parts = stratified_split(y, {part: val_size, "train": len(y) - val_size}, seed)
    out = {"train": (x[parts["train"]], y[parts["train"]]), part: (x[parts[part]], y[parts[part]])}
    out |= {k: v for k, v in splits.items() if k != "train"}
    record = {
        "method": "stratified hold-out of train",
        "seed": seed,
        "sizes": {k: len(v[1]) for k, v in out.items()},
        f"{part}_indices_in_train": parts[part].tolist(),
    }
    return out, record


MNIST_SAMPLE_FILES = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_SAMPLE_SIZES = {"val": 1000, "test": 2000, "train": 7000}
MNIST_SAMPLE_SEED = 0


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def prepare_mnist_sample(raw_dir: Path, options: FetchOptions) -> Prepared:
    """Copy the shipped MNIST test split into ``raw_dir`` and split it 7,000/1,000/2,000."""
    shipped = resources.files("cnnpipe.data") / "mnist-sample"
    if options.val_size is not None:
        raise CnnpipeError("mnist-sample has a fixed 7,000/1,000/2,000 split; --val-size does not apply")
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
        classes=list(CATALOG_CLASSES["MNIST"]),
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


def _torchvision(cls_name: str) -> Any:
    import torchvision.datasets

    return getattr(torchvision.datasets, cls_name)


def _idx_prepare(cls_name: str) -> Callable[[Path, FetchOptions], Prepared]:
    """MNIST-style datasets: torchvision's file list, md5s and mirrors; IDX decoding."""

    def prepare(raw_dir: Path, options: FetchOptions) -> Prepared:
        cls = _torchvision(cls_name)
        bases = sources(list(cls.mirrors), options.mirror)
        raw_dir.mkdir(parents=True, exist_ok=True)
        for fname, md5 in cls.resources:
            fetch(fname, md5, bases, raw_dir, options.on_bytes)
        splits = {
            part: (read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz")[:, None],
                   read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
            for part, prefix in (("train", "train"), ("test", "t10k"))
        }
        splits, record = hold_out(splits, options.val_size or 5000, options.seed)
        return Prepared(
            splits=splits,
            classes=list(CATALOG_CLASSES[cls_name]),
            source={"base_urls": bases, "files": {f: {"md5": m} for f, m in cls.resources}},
            split=record,
        )

    return prepare


def prepare_cifar10(raw_dir: Path, options: FetchOptions) -> Prepared:
    """CIFAR-10 from torchvision's URL and md5; its pickled batches are read as arrays only."""
    cls = _torchvision("CIFAR10")
    base, fname = cls.url.rsplit("/", 1)
    bases = sources([base + "/"], options.mirror)
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = fetch(fname, cls.tgz_md5, bases, raw_dir, options.on_bytes)
    splits, record = hold_out(read_cifar10(path), options.val_size or 5000, options.seed)
    return Prepared(
        splits=splits,
        classes=list(CATALOG_CLASSES["CIFAR10"]),
        source={"base_urls": bases, "files": {fname: {"md5": cls.tgz_md5}}},
        split=record,
    )


CATALOG_CLASSES = {
    "MNIST": tuple(str(d) for d in range(10)),
    "FashionMNIST": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "CIFAR10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
NO_AUGMENT: dict[str, Any] = {"crop_padding": 0, "flip": False}

CATALOG: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="mnist-sample",
            hub_id="ylecun/mnist",
            summary="10,000 real MNIST digits (the official test split), split 7,000/1,000/2,000; offline",
            channels=1,
            size=28,
            classes=CATALOG_CLASSES["MNIST"],
            augment=NO_AUGMENT,
            license="CC BY-SA 3.0 (Yann LeCun, Corinna Cortes, Christopher Burges)",
            prepare=prepare_mnist_sample,
        ),
        DatasetSpec(
            name="mnist",
            hub_id="ylecun/mnist",
            summary="MNIST handwritten digits: 60,000 train (less the validation hold-out), 10,000 test",
            channels=1,
            size=28,
            classes=CATALOG_CLASSES["MNIST"],
            augment=NO_AUGMENT,
            license="CC BY-SA 3.0 (Yann LeCun, Corinna Cortes, Christopher Burges)",
            prepare=_idx_prepare("MNIST"),
        ),
        DatasetSpec(
            name="fashion-mnist",
            hub_id="zalando-datasets/fashion_mnist",
            summary="Fashion-MNIST (Zalando): 60,000 train (less the validation hold-out), 10,000 test",
            channels=1,
            size=28,
            classes=CATALOG_CLASSES["FashionMNIST"],
            augment={"crop_padding": 2, "flip": True},
            license="MIT (Zalando Research)",
            prepare=_idx_prepare("FashionMNIST"),
        ),
        DatasetSpec(
            name="cifar10",
            hub_id="uoft-cs/cifar10",
            summary="CIFAR-10: 50,000 train (less the validation hold-out), 10,000 test, 32x32 RGB",
            channels=3,
            size=32,
            classes=CATALOG_CLASSES["CIFAR10"],
            augment={"crop_padding": 4, "flip": True},
            license="no licence stated (Alex Krizhevsky, Vinod Nair, Geoffrey Hinton)",
            prepare=prepare_cifar10,
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
