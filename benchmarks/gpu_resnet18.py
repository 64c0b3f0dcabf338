"""ResNet18 on the CIFAR-10 JPEG folder: cnnpipe's compiled bf16 channels_last engine vs the seeds' loop.

Part 1 (throughput): the seeds' loop (torchvision ImageFolder, RandomCrop+Flip+ToTensor+Normalize
per sample, DataLoader with workers, eager fp32) against ``cnnpipe train`` (device-resident
uint8, batched augmentation, torch.compile, bf16 autocast, channels_last); images/s after
warm-up, same batch size, same process. Part 2 (time to accuracy): one full ``cnnpipe train``
run with ``--recipe fast`` (or the seeds' recipe with ``--recipe seeds``), wall time including
compilation from an empty Inductor and Triton cache, where it went, then the test accuracy from
``cnnpipe evaluate``.

    tar xzf cifar10-jpeg.tar.gz -C "$TMPDIR"
    python benchmarks/gpu_resnet18.py --data "$TMPDIR/cifar10-jpeg"

``--limit N`` uses N training images per class (a smoke run, e.g. on a CPU). ``--profile``
adds a 2-epoch run under torch.profiler (after a 1-epoch run that compiles) and prints where the device time goes and how many
host-device synchronisations there were (``TORCH_LOGS=recompiles`` shows any recompile).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from cnnpipe.nets.registry import build
from cnnpipe.options import DownloadOptions, TrainConfig
from cnnpipe.options.training import RECIPES
from cnnpipe.stages.download import import_folder
from cnnpipe.stages.evaluate import evaluate
from cnnpipe.stages.train import train


def seeds_images_per_s(data: Path, batch: int, steps: int, device: torch.device, workers: int, limit: int | None) -> float:
    """Eager fp32 ResNet18 fed by per-sample PIL transforms through a DataLoader."""
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    folder = datasets.ImageFolder(str(data / "train"), tf)
    if limit:
        folder = Subset(folder, list(range(0, len(folder), max(1, len(folder) // (limit * 10)))))
    loader = DataLoader(folder, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda")
    model = build("resnet18", 3, 32, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 3:  # warm-up done
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        seen += len(y)
        if i >= steps + 3:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start) if start else float("nan")


def profile_training(config: TrainConfig, root: Path) -> None:
    """Two epochs of ``config`` under torch.profiler, compiled beforehand: top device kernels, host syncs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    train(replace(config, epochs=1, name="profiled"), root)  # compiles: the profile below sees the steady state
    with profile(activities=activities) as prof:
        train(replace(config, epochs=2, name="profiled"), root)
    averages = prof.key_averages()
    sort = "device_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=20))
    syncs = {e.key: e.count for e in averages if "Synchronize" in e.key or "cudaMemcpy" in e.key}
    print("host-device synchronisations and copies (2 epochs):", syncs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="the extracted cifar10-jpeg folder")
    parser.add_argument("--recipe", default="fast", choices=["fast", "seeds"],
                        help="fast: cnnpipe's --recipe fast; seeds: SGD-Nesterov OneCycle 0.2, label smoothing 0.1")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's (30 for seeds)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps of the seeds' loop")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="also profile two epochs")
    parser.add_argument("--compile-mode", default="reduce-overhead", choices=["default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--warm-cache", action="store_true", help="keep Inductor's and Triton's caches (default: empty)")
    args = parser.parse_args()
    if not args.warm_cache:  # a cold compilation, as on a fresh machine, whatever ran here before
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(tempfile.mkdtemp(prefix="cnnpipe-bench-"))
    src = args.data
    if args.limit:  # a small copy of the folder for smoke runs
        src = root / "subset"
        for split in ("train", "test"):
            for cls in sorted((args.data / split).iterdir()):
                (src / split / cls.name).mkdir(parents=True)
                for f in sorted(cls.iterdir())[: args.limit]:
                    shutil.copyfile(f, src / split / cls.name / f.name)
    t0 = time.perf_counter()
    import_folder(src, DownloadOptions(dataset_name="cifar10-jpeg"), root)
    import_s = time.perf_counter() - t0

    if args.recipe == "fast":
        config = TrainConfig(arch="resnet18", dataset="cifar10-jpeg", recipe="fast",
                             epochs=args.epochs or RECIPES["fast"]["epochs"])
    else:
        config = TrainConfig(
            arch="resnet18", dataset="cifar10-jpeg", epochs=args.epochs or 30, batch_size=512, lr=0.2,
            optimizer="sgd", nesterov=True, schedule="onecycle", label_smoothing=0.1, compile_mode=args.compile_mode,
        )
    batch = config.resolved().batch_size
    seeds = seeds_images_per_s(args.data, batch, args.steps, device, args.workers, args.limit)
    t0 = time.perf_counter()
    result = train(config, root)
    wall = time.perf_counter() - t0
    test = evaluate(result.ref, root=root)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"ResNet18, CIFAR-10 JPEG folder, recipe {args.recipe}, batch {batch}, device {name}, torch {torch.__version__}")
    print(f"{'loop':<62} {'img/s':>10} {'ratio':>6}")
    print(f"{'seeds (DataLoader, per-sample transforms, eager fp32)':<62} {seeds:>10,.0f} {1.0:>6.2f}")
    compiled = f"compiled {config.resolved().compile_mode}" if result.compiled else "eager"
    label = f"cnnpipe ({compiled} {result.precision} channels_last)"
    print(f"{label:<62} {result.images_per_s:>10,.0f} {result.images_per_s / seeds:>6.2f}")
    print(f"import {import_s:.1f} s; train {result.epochs_run} epochs: wall {wall:.1f} s "
          f"(compile {result.compile_s:.1f} s, training {result.train_s:.1f} s); test accuracy {test.accuracy:.4f}")
    parts = result.parts | {"compile_s": result.compile_s, "train_s": result.train_s}
    parts["other_s"] = wall - sum(parts.values())
    print("where the wall went: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in parts.items()))
    if args.profile:  # after the timed run, so its wall time includes a cold compilation
        profile_training(config, root)


if __name__ == "__main__":
    main()
