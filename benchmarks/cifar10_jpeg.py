"""The whole CIFAR-10 JPEG folder from ``../shared/datasets``: import (60,000 JPEGs, decoded and checked) and one
epoch of LeNet-5, through the real CLI; prints a Markdown table. The suite imports a slice of it
(``tests/test_imagefolder.py``); this is the full-size run it stands for.

    python benchmarks/cifar10_jpeg.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def cnnpipe(root: Path, *args: str) -> tuple[dict, float]:
    """One command's ``--json`` answer and its wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cnnpipe", "--root", str(root), *args, "--json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cnnpipe {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return json.loads(proc.stdout), time.perf_counter() - start


def main() -> None:
    if not ARCHIVE.is_file():
        raise SystemExit(f"{ARCHIVE.name} is not in ../shared/datasets")
    with tempfile.TemporaryDirectory() as work:
        folder, root = Path(work) / "src", Path(work) / "store"
        start = time.perf_counter()
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(folder, filter="data")
        extract = time.perf_counter() - start
        root.mkdir()
        imported, import_s = cnnpipe(root, "download", "imagefolder", str(folder / "cifar10-jpeg"), "--name", "cifar10-jpeg")
        counts = {split: sum(per_class.values()) for split, per_class in imported["counts"].items()}
        trained, train_s = cnnpipe(root, "train", "--dataset", "cifar10-jpeg", "--epochs", "1", "--batch-size", "256",
                                   "--lr", "3e-3")
    images = sum(counts.values())
    print("| step | images | wall s | images/s | result |\n| --- | ---: | ---: | ---: | --- |")
    print(f"| extract the archive | {images:,} | {extract:.1f} | {images / extract:,.0f} | |")
    print(f"| `download imagefolder` | {images:,} | {import_s:.1f} | {images / import_s:,.0f} | "
          f"train {counts['train']:,} / val {counts['val']:,} / test {counts['test']:,} |")
    print(f"| `train` lenet5, 1 epoch | {counts['train']:,} | {train_s:.1f} | {counts['train'] / train_s:,.0f} | "
          f"val accuracy {trained['val_accuracy']:.3f} |")


if __name__ == "__main__":
    main()
