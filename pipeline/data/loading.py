"""A prepared dataset version in memory: uint8 tensors per split, normalized in batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cnnpipe.errors import CnnpipeError
from cnnpipe.store import Version

TENSORS = "tensors.safetensors"
INFO = "dataset.json"


@dataclass
class Dataset:
    """A dataset version: description plus uint8 NCHW images and int64 labels per split."""

    version: Version
    info: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def dataset_hash(self) -> str:
        return self.version.results["dataset_hash"]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (uint8, N×C×H×W) and labels (int64) of one split."""
        if f"x_{name}" not in self.tensors:
            raise CnnpipeError(
                f"dataset {self.version.ref} has no split {name!r}; it has {', '.join(self.info['counts'])}"
            )
        return self.tensors[f"x_{name}"], self.tensors[f"y_{name}"]


def load_dataset(version: Version) -> Dataset:
    """Load a dataset version after re-checking every file's sha256."""
    version.check()
    try:
        tensors = load_file(version.file(TENSORS))
    except (SafetensorError, OSError) as e:
        raise CnnpipeError(f"{version.file(TENSORS)}: unreadable tensors ({e})") from None
    return Dataset(version=version, info=version.read_json(INFO), tensors=tensors)


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 N×C×H×W images to float32 ``(pixel / 255 - mean) / std``, on their device."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s
