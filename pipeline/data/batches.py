"""Training batches: device-resident or streamed, augmented in batches on the device.

``DeviceBatches`` keeps a split on the training device and gathers each batch by
index; ``StreamBatches`` memory-maps it and gathers batches in DataLoader workers.
Both follow the same index order, and augmentation draws its randomness from one CPU
generator in the same sequence, so the same seed gives the same batches either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

Batch = tuple[torch.Tensor, torch.Tensor]


def batch_count(n: int, batch_size: int, drop_last: bool) -> int:
    """How many batches ``batch_order`` cuts: the ragged last one is dropped on request, and always when it
    would hold a single image beside full ones (BatchNorm cannot train on one value per channel)."""
    whole, ragged = divmod(n, batch_size)
    return whole + (not drop_last and (ragged > 1 or (ragged == 1 and whole == 0)))


def batch_order(n: int, batch_size: int, drop_last: bool, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle of ``range(n)`` cut into ``batch_count`` batches."""
    order = torch.randperm(n, generator=generator)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(batch_count(n, batch_size, drop_last))]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device`` without a host sync: CUDA copies go from pinned memory, asynchronously."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment(images: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of uint8 N×C×H×W, batched."""
    n, c, h, w = images.shape
    device = images.device
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(images, (p, p, p, p))
        dy = to_device(torch.randint(0, 2 * p + 1, (n,), generator=generator), device)
        dx = to_device(torch.randint(0, 2 * p + 1, (n,), generator=generator), device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        chans = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if flip:
        mask = to_device(torch.rand(n, generator=generator) < 0.5, device)[:, None, None, None]
        images = torch.where(mask, images.flip(3), images)
    return images


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a random ``size``×``size`` square (clipped at the border) of each normalized image in N×C×H×W:
    the dataset's mean colour. Its centres come from ``generator``, like the crops'."""
    n, _, h, w = x.shape
    device = x.device
    top = to_device(torch.randint(0, h, (n,), generator=generator), device)[:, None, None] - size // 2
    left = to_device(torch.randint(0, w, (n,), generator=generator), device)[:, None, None] - size // 2
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x * ~inside[:, None]


class DeviceBatches:
    """A whole split on the training device; batches are gathered by index there."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        self.images = torch.from_numpy(np.array(images)).to(device)
        self.labels = torch.from_numpy(labels).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor]) -> Iterator[Batch]:
        for idx in order:
            idx = to_device(idx, self.images.device)
            yield self.images[idx], self.labels[idx]


class _Gather(Dataset):
    """Item ``i`` is batch ``i`` of a fixed order, gathered from memory-mapped arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, order: list[torch.Tensor]):
        self.images, self.labels, self.order = images, labels, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Batch:
        idx = self.order[i].numpy()
        rows = np.sort(idx)
        inverse = np.argsort(np.argsort(idx))
        x = np.asarray(self.images[rows])[inverse]
        return torch.from_numpy(x), torch.from_numpy(self.labels[idx])


class StreamBatches:
    """A memory-mapped split streamed through a DataLoader with worker processes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device, workers: int = 2):
        self.images, self.labels, self.device, self.workers = images, labels, device, workers

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor]) -> Iterator[Batch]:
        loader: Any = DataLoader(
            _Gather(self.images, self.labels, order),
            batch_size=None,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
            persistent_workers=False,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
