"""Decoding of the CIFAR-10 python tarball without trusting its pickles."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..errors import CnnpipeError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2; it only encodes a string
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes and numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _batch(tar: tarfile.TarFile, member: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        handle = tar.extractfile(f"cifar-10-batches-py/{member}")
        if handle is None:
            raise KeyError(member)
        batch = _ArraysOnly(io.BytesIO(handle.read()), encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (KeyError, pickle.UnpicklingError, ValueError, TypeError, EOFError) as e:
        raise CnnpipeError(f"{path}: bad CIFAR-10 batch {member!r} ({e})") from None
    if len(data) != len(labels):
        raise CnnpipeError(f"{path}: CIFAR-10 batch {member!r} has {len(data)} images but {len(labels)} labels")
    return data, labels


def read_cifar10(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The train (50,000) and test (10,000) images, uint8 N×3×32×32, read from the tarball in memory."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            train = [_batch(tar, m, path) for m in TRAIN_BATCHES]
            test = _batch(tar, TEST_BATCH, path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CnnpipeError(f"{path}: not a readable CIFAR-10 tarball ({e})") from None
    return {
        "train": (np.concatenate([d for d, _ in train]), np.concatenate([y for _, y in train])),
        "test": test,
    }
