"""Evaluating 10,000 images vs one training epoch on the same 10,000 images, through the real stages.

The 10,000 real MNIST digits shipped with cnnpipe are written as PNG files into an image
folder whose train/, val/ and test/ each hold all of them, imported with
``import_folder``, trained for one epoch with ``train`` (its per-epoch ``train_s``), then
evaluated with ``evaluate`` (inference + metrics, and the whole stage with its plots,
model card and commit). Usage: python benchmarks/evaluate_cpu.py [--model lenet5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from importlib import resources
from pathlib import Path

import torch
from PIL import Image

from cnnpipe.data.idx import read_idx
from cnnpipe.options import DownloadOptions, EvaluateOptions, TrainConfig
from cnnpipe.stages.download import import_folder
from cnnpipe.stages.evaluate import evaluate
from cnnpipe.stages.train import train


def write_folder(root: Path) -> None:
    """The shipped t10k digits as PNGs, the same 10,000 in train/, val/ and test/."""
    shipped = resources.files("cnnpipe.data") / "mnist-sample"
    with resources.as_file(shipped / "t10k-images-idx3-ubyte.gz") as f:
        images = read_idx(f)
    with resources.as_file(shipped / "t10k-labels-idx1-ubyte.gz") as f:
        labels = read_idx(f)
    for part in ("train", "val", "test"):
        for digit in range(10):
            (root / part / str(digit)).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        first = root / "train" / str(label) / f"{i:05d}.png"
        Image.fromarray(img).save(first)
        for part in ("val", "test"):
            (root / part / str(label) / first.name).write_bytes(first.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--repeat", type=int, default=3, help="evaluations to time (best is kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        write_folder(tmp_path / "digits")
        import_folder(tmp_path / "digits", DownloadOptions(dataset_name="digits", size=28, channels=1, flip=False, plots=False),
                      tmp_path)
        trained = train(TrainConfig(arch=args.model, dataset="digits", epochs=1, device="cpu"), tmp_path)
        history = [json.loads(line) for line in (Path(trained.path) / "history.jsonl").read_text().splitlines()]
        runs = [evaluate(trained.ref, EvaluateOptions(device="cpu"), tmp_path) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r.seconds["total"])
    epoch_s = history[0]["train_s"]
    rows = [
        ("train: one epoch (forward, backward, Adam step)", epoch_s),
        ("evaluate: inference + every metric", best.seconds["inference"]),
        ("evaluate: whole stage (+ 3 plots, model card, fsync'd commit)", best.seconds["total"]),
    ]
    print(f"{args.model} on the same 10,000 28x28 images, {torch.get_num_threads()} torch threads, "
          f"best of {args.repeat} evaluations; accuracy {best.accuracy:.4f}")
    print(f"{'what':<66} {'s':>7} {'img/s':>10} {'vs epoch':>9}")
    for what, seconds in rows:
        print(f"{what:<66} {seconds:>7.2f} {best.images / seconds:>10,.0f} {epoch_s / seconds:>8.2f}x")


if __name__ == "__main__":
    main()
