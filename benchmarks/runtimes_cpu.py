"""`cnnpipe bench` on this CPU for lenet5 (1x28x28) and resnet18 (3x32x32): PyTorch eager vs
TorchScript vs pt2 (and its AOTInductor package) vs onnxruntime (fp32, fp16, int8, and the
.ort file) vs OpenVINO (fp32, fp16 weights) vs ExecuTorch (XNNPACK) vs LiteRT (XNNPACK) vs
NCNN vs MNN, p50/p99 latency at
batch 1 and throughput at a large batch, with each format's file size and the fastest
runtime per batch size.

Each network is trained for one short epoch (the weights do not change the timing) on a
small generated image folder of its input shape, exported, and benched through the real
stages, all runtimes with the same thread count. Prints one table per network, then the
batch-1 p50 ratio of each compiled runtime to PyTorch eager in each of --rounds rounds
(every round times all runtimes again, so a noisy minute on a shared VM shows up as a
spread instead of a wrong figure) and their median.
Usage: python benchmarks/runtimes_cpu.py [--seconds 3] [--threads N] [--batch 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnpipe.formats import FORMATS
from cnnpipe.options import BenchOptions, DownloadOptions, ExportOptions, TrainConfig
from cnnpipe.stages.bench import bench
from cnnpipe.stages.download import import_folder
from cnnpipe.stages.export import export
from cnnpipe.stages.train import train
from cnnpipe.verification.signing import Trust

NETWORKS = {"lenet5": 1, "resnet18": 3}  # name: channels (lenet5 at 28x28, resnet18 at 32x32)
OWN = Trust(native=True)  # the bundles this script builds itself: their AOTInductor code is its own
COMPILED = ("aoti (cpu)", "onnxruntime (cpu)", "onnxruntime fp16 (cpu)", "onnxruntime int8 (cpu)", "onnxruntime .ort (cpu)",
            "openvino (cpu)", "openvino fp16 (cpu)", "executorch (cpu)", "litert (xnnpack) (cpu)", "ncnn (cpu)", "mnn (cpu)")


def make_folder(root: Path, channels: int, size: int, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    for label in range(10):
        folder = root / str(label)
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, channels) if channels == 3 else (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per runtime and batch size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="batch-1 rounds; the ratio reported is their median")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, channels in NETWORKS.items():
            size = 28 if name == "lenet5" else 32
            make_folder(root / f"images-{name}", channels, size)
            import_folder(root / f"images-{name}", DownloadOptions(dataset_name=f"data-{name}", size=size, channels=channels,
                                                                  plots=False), root)
            trained = train(TrainConfig(arch=name, dataset=f"data-{name}", epochs=1, batch_size=16,
                                        optimizer="adam", lr=1e-3, device="cpu"), root)
            bundle = export(trained.ref, ExportOptions(fp16=True, int8=True, aoti=True), root)
            result = bench(bundle.ref, BenchOptions(f"1,{args.batch}", args.seconds, args.threads), root, trust=OWN)
            print(f"\n{name}: input {'x'.join(map(str, result.input_shape))}, {result.threads} threads, "
                  f"torch {torch.__version__}")
            print(f"{'runtime':<26} {'batch':>5} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>10}")
            for r in result.rows:
                print(f"{r.runtime:<26} {r.batch:>5} {r.calls:>6} {r.p50_ms:>8.3f} "
                      f"{r.p99_ms:>8.3f} {r.images_per_s:>10,.0f}")
            files = json.loads((Path(bundle.path) / "model.json").read_text())["files"]
            sizes = {fmt: sum((Path(bundle.path) / rel).stat().st_size for rel in FORMATS[fmt].files) for fmt in files}
            print("file sizes: " + ", ".join(f"{fmt} {size / 1024:,.0f} KiB" for fmt, size in sizes.items()))
            for batch in (1, args.batch):
                rows = [r for r in result.rows if r.batch == batch]
                best = max(rows, key=lambda r: r.images_per_s)
                print(f"fastest at batch {batch}: {best.runtime} ({best.images_per_s:,.0f} images/s); recommended "
                      f"(an int8 file only when it kept its limit): {result.recommended.get(str(batch), '-')}")
            rounds = [result.rows] + [bench(bundle.ref, BenchOptions("1", args.seconds, args.threads), root, trust=OWN).rows
                                      for _ in range(args.rounds - 1)]
            for runtime in (r for r in COMPILED if any(row.runtime == r for row in result.rows)):  # int8 may be refused
                ratios = []
                for rows in rounds:
                    p50 = {r.runtime: r.p50_ms for r in rows if r.batch == 1}
                    ratios.append(p50["pytorch eager (cpu)"] / p50[runtime])
                print(f"batch-1 p50, eager / {runtime}: median {statistics.median(ratios):.2f}x "
                      f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")

if __name__ == "__main__":
    main()
