"""A prepared dataset version: decoded uint8 images and int64 labels per split.

Images are stored once, decoded, as ``splits/<split>-images.npy`` (uint8 N×C×H×W) and
``splits/<split>-labels.npy`` (int64), so no image is decoded again while training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CnnpipeError
from ..store.version import Version

if TYPE_CHECKING:  # torch is imported where tensors are made: importing a dataset needs none
    import torch

INFO = "dataset.json"


def split_files(split: str) -> tuple[str, str]:
    """The images and labels file of ``split`` inside a dataset version."""
    return f"splits/{split}-images.npy", f"splits/{split}-labels.npy"


@dataclass
class Dataset:
    """A dataset version: its description plus uint8 images and int64 labels per split."""

    version: Version
    info: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def dataset_hash(self) -> str:
        return self.version.results["dataset_hash"]

    def _files(self, name: str) -> tuple[Any, Any]:
        if name not in self.info["counts"]:
            raise CnnpipeError(
                f"dataset {self.version.ref} has no split {name!r}; it has {', '.join(self.info['counts'])}"
            )
        return tuple(self.version.file(rel) for rel in split_files(name))

    def arrays(self, name: str, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Images (uint8 N×C×H×W; memory-mapped with ``mmap``) and int64 labels of one split."""
        images_path, labels_path = self._files(name)
        try:
            images = np.load(images_path, mmap_mode="r" if mmap else None, allow_pickle=False)
            labels = np.load(labels_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty or cut file
            raise CnnpipeError(f"{self.version.path}: unreadable split {name!r} ({e})") from None
        if images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int64 or len(images) != len(labels):
            raise CnnpipeError(f"{self.version.path}: split {name!r} has malformed arrays")
        return images, labels

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (uint8 N×C×H×W) and labels (int64) of one split, in memory."""
        import torch

        images, labels = self.arrays(name)
        return torch.from_numpy(images), torch.from_numpy(labels)


def load_dataset(version: Version) -> Dataset:
    """Open a dataset version after re-checking every file's sha256."""
    version.rehash()
    return Dataset(version=version, info=version.read_json(INFO))


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 N×C×H×W images to float32 ``(pixel / 255 - mean) / std``, on their device."""
    import torch

    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s
