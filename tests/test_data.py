"""Batched augmentation, the two loaders, and CIFAR-10 decoding without trusting pickles."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnpipe.data.batches import DeviceBatches, StreamBatches, augment, batch_count, batch_order
from cnnpipe.data.cifar import read_cifar10
from cnnpipe.errors import CnnpipeError
from cnnpipe.options import DownloadOptions, TrainConfig
from cnnpipe.stages.download import download
from cnnpipe.stages.train import train


def test_random_crop_is_a_shift_of_the_zero_padded_image_and_flip_mirrors():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 8, 8) + 1
    out = augment(images, crop_padding=2, flip=False, generator=torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == torch.uint8
    gen = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(0, 5, (2,), generator=gen), torch.randint(0, 5, (2,), generator=gen)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(2):
        expected = padded[n, :, dy[n] : dy[n] + 8, dx[n] : dx[n] + 8]
        assert torch.equal(out[n], expected)
    flipped = augment(images, crop_padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    for n in range(2):
        assert torch.equal(flipped[n], images[n]) or torch.equal(flipped[n], images[n].flip(2))
    many = augment(images.repeat(50, 1, 1, 1), 0, True, torch.Generator().manual_seed(0))
    n_flipped = sum(not torch.equal(many[i], images[i % 2]) for i in range(100))
    assert 30 < n_flipped < 70


def test_device_and_stream_loaders_give_the_same_batches_in_the_same_order(tmp_path: Path):
    images = np.random.default_rng(0).integers(0, 256, (103, 1, 6, 6), dtype=np.uint8)
    labels = np.arange(103, dtype=np.int64) % 7
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    order = batch_order(103, 16, drop_last=True, generator=torch.Generator().manual_seed(3))
    assert len(order) == 6 and sum(map(len, order)) == 96
    device = list(DeviceBatches(images, labels, torch.device("cpu")).batches(order))
    streamed = list(StreamBatches(mapped, labels, torch.device("cpu"), workers=2).batches(order))
    assert len(device) == len(streamed) == 6
    for (xa, ya), (xb, yb), idx in zip(device, streamed, order):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, torch.from_numpy(images[idx.numpy()]))


def test_training_through_either_loader_gives_identical_weights(tmp_path: Path):
    download("mnist-sample", DownloadOptions(plots=False), tmp_path)
    for loader in ("device", "stream"):
        result = train(TrainConfig(epochs=1, loader=loader, name=loader, batch_size=128, device="cpu"), tmp_path)
        assert result.history[0]["train_accuracy"] > 0.5
    weights = [
        (tmp_path / f"models/{loader}/v1/weights.safetensors").read_bytes() for loader in ("device", "stream")
    ]
    assert weights[0] == weights[1]


def _cifar_tarball(path: Path, payload: object | None = None) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = payload if payload is not None and name == "test_batch" else {
                "batch_label": f"{name}", "labels": [int(v) for v in rng.integers(0, 10, 20)],
                "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
            }
            data = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifar10_batches_decode_as_arrays(tmp_path: Path):
    _cifar_tarball(tmp_path / "c.tar.gz")
    splits = read_cifar10(tmp_path / "c.tar.gz")
    assert splits["train"][0].shape == (100, 3, 32, 32) and splits["test"][0].shape == (20, 3, 32, 32)
    assert splits["train"][1].dtype == np.int64


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_cifar10_pickle_that_runs_code_is_refused(tmp_path: Path):
    _cifar_tarball(tmp_path / "evil.tar.gz", payload={"data": _Exploit(), "labels": []})
    with pytest.raises(CnnpipeError, match="refusing to load posix.system"):
        read_cifar10(tmp_path / "evil.tar.gz")


def test_a_ragged_last_batch_of_one_image_is_dropped_beside_full_ones():
    """BatchNorm cannot train on one image per channel (torchvision's resnet18 at 32 px failed so)."""
    assert [len(b) for b in batch_order(97, 16, False, torch.Generator().manual_seed(0))] == [16] * 6
    assert [len(b) for b in batch_order(103, 16, False, torch.Generator().manual_seed(0))] == [16] * 6 + [7]
    assert batch_count(1, 16, False) == 1 and batch_count(17, 16, True) == 1 and batch_count(18, 16, False) == 2
