"""One epoch of LeNet-5 (or ``--model``) on 60,000 real 28x28 digits on the CPU: cnnpipe's loader vs the seeds' loop.

The seeds' loop: a map-style dataset of PIL images, ``ToTensor`` + ``Normalize`` per sample,
``DataLoader(batch_size=64, shuffle=True)``. cnnpipe's: the decoded uint8 split in memory,
batches gathered by index and normalized in one op per batch, through ``train_epoch``.
The images are the MNIST test split shipped with cnnpipe, six times over (60,000).
Both run the same network, optimizer and batch size in the same process; the table gives
images/s and the ratio.  Usage: python benchmarks/loader_cpu.py [--epochs N] [--workers W]
"""

from __future__ import annotations

import argparse
import time
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnpipe.data.batches import DeviceBatches, batch_order
from cnnpipe.data.idx import read_idx
from cnnpipe.data.loading import normalize
from cnnpipe.nets.registry import build
from cnnpipe.training.engine import train_epoch

MEAN, STD = [0.1307], [0.3081]


class SeedDataset(Dataset):
    """What torchvision's MNIST does per item: a PIL image through the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def seed_epoch(model, optimizer, loader) -> float:
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def seed_loader_only(loader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def engine_loader_only(source, generator) -> float:
    start = time.perf_counter()
    for images, _ in source.batches(batch_order(len(source), 64, False, generator)):
        normalize(images, MEAN, STD).contiguous(memory_format=torch.channels_last)
    return time.perf_counter() - start


def engine_epoch(model, optimizer, source, generator) -> float:
    order = batch_order(len(source), 64, False, generator)
    stats = train_epoch(model, optimizer, source.batches(order), MEAN, STD, {"crop_padding": 0, "flip": False}, generator)
    return stats.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loop; the best is reported")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the seeds' loop")
    parser.add_argument("--model", default="lenet5", help="registered network (lenet5, simplenet, …)")
    args = parser.parse_args()
    shipped = resources.files("cnnpipe.data") / "mnist-sample"
    with resources.as_file(shipped / "t10k-images-idx3-ubyte.gz") as p:
        images = np.tile(read_idx(p), (6, 1, 1))
    with resources.as_file(shipped / "t10k-labels-idx1-ubyte.gz") as p:
        labels = np.tile(read_idx(p).astype(np.int64), 6)
    n = len(labels)
    loader = DataLoader(SeedDataset(images, labels), batch_size=64, shuffle=True, num_workers=args.workers)
    source = DeviceBatches(images[:, None], labels, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    seed_load = min(seed_loader_only(loader) for _ in range(args.epochs))
    ours_load = min(engine_loader_only(source, gen) for _ in range(args.epochs))

    torch.manual_seed(0)
    model = build(args.model, 1, 28, 10)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    seed_s = min(seed_epoch(model, opt, loader) for _ in range(args.epochs))
    torch.manual_seed(0)
    model = build(args.model, 1, 28, 10).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    ours_s = min(engine_epoch(model, opt, source, gen) for _ in range(args.epochs))

    seeds = f"seeds' loop (DataLoader, ToTensor+Normalize per sample, {args.workers} workers)"
    ours = "cnnpipe (uint8 in memory, batched normalize, channels_last, fused Adam)"
    print(f"{args.model} on {n:,} 28x28 images, batch 64, {torch.get_num_threads()} torch threads, best of {args.epochs}")
    print(f"{'what':<10} {'loop':<80} {'s':>7} {'img/s':>10} {'ratio':>6}")
    for what, base, rows in (
        ("loading", seed_load, [(seeds, seed_load), (ours, ours_load)]),
        ("epoch", seed_s, [(seeds, seed_s), (ours, ours_s)]),
    ):
        for name, secs in rows:
            print(f"{what:<10} {name:<80} {secs:>7.2f} {n / secs:>10,.0f} {base / secs:>6.2f}")


if __name__ == "__main__":
    main()
