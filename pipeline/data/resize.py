"""Image size: its bounds, the one resize every import uses, and statistics without a float copy."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..errors import CnnpipeError

MIN_SIZE, MAX_SIZE = 8, 512  # square side in pixels; MAX_SIZE bounds a split's memory (N x C x 512 x 512 bytes)
FOLDER_SIZE = 32  # an image folder's side when none is given
RESAMPLE = Image.Resampling.BILINEAR


def check_size(size: int) -> None:
    """A usage error unless ``size`` is a side cnnpipe stores."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise CnnpipeError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, not {size}")


def resize_image(img: Image.Image, size: int) -> Image.Image:
    """``img`` as ``size`` x ``size`` (bilinear, as torchvision's default), unchanged if it already is."""
    return img if img.size == (size, size) else img.resize((size, size), RESAMPLE)


def _resize_one(image: np.ndarray, size: int) -> np.ndarray:
    channels = image.shape[0]
    img = Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0))
    arr = np.asarray(resize_image(img, size), dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def in_threads(count: int, one: Callable[[int], None], workers: int | None = None) -> None:
    """Call ``one(i)`` for every ``i < count`` in threads (Pillow releases the GIL while it decodes and resizes)."""
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(count), chunksize=64))


def resize_split(images: np.ndarray, size: int, workers: int | None = None) -> np.ndarray:
    """uint8 N x C x H x W images resized to N x C x ``size`` x ``size``, in threads."""
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = _resize_one(images[i], size)

    in_threads(len(images), one, workers)
    return out


def channel_stats(images: np.ndarray, chunk_bytes: int = 64 * 2**20) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 N x C x H x W images scaled to [0, 1],
    summed in float64 over chunks of at most ``chunk_bytes`` (two passes), so no float copy of
    the whole split is made."""
    channels = images.shape[1]
    rows = max(1, chunk_bytes // (8 * images[0].size)) if len(images) else 1

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(images), rows):
            part = images[start:start + rows].transpose(1, 0, 2, 3).reshape(channels, -1).astype(np.float64)
            part /= 255.0
            yield part

    count = images.size // channels
    mean = sum((part.sum(axis=1) for part in chunks()), np.zeros(channels)) / count

    def squares(part: np.ndarray) -> np.ndarray:
        part -= mean[:, None]
        np.square(part, out=part)
        return part.sum(axis=1)

    var = sum((squares(part) for part in chunks()), np.zeros(channels)) / count
    return mean.tolist(), np.sqrt(var).tolist()
