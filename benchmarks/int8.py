"""The int8 ladder against plain static quantization, on four networks trained on the CIFAR-10 JPEGs.

For resnet18, torchvision:mobilenet_v3_small, torchvision:efficientnet_b0 and timm:resnet10t, each
trained for a few epochs (``NETWORKS``) on a slice of ``../shared/datasets/cifar10-jpeg.tar.gz`` (32x32, the whole
test split kept), this prints side by side: the fp32 test accuracy; what a peer tool gives, onnxruntime's
``quantize_static`` with its defaults (QDQ, MinMax, per-tensor); each rung cnnpipe's ladder tried on the
validation split; the chosen file's test accuracy with the 95% interval of its drop; OpenVINO's int8
(the same ladder on NNCF) and bf16; and batch-1 / batch-64 images/s against fp32 onnxruntime, every
runtime on the same threads in this one process.

    python benchmarks/int8.py [--per-class 1500] [--epochs N] [--limit 1.0] [--seconds 2] [--networks a,b]
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from cnnpipe.description import read_description
from cnnpipe.evaluation.bounds import paired_drop
from cnnpipe.options import BenchOptions, DownloadOptions, ExportOptions, TrainConfig
from cnnpipe.stages.bench import bench, time_calls
from cnnpipe.stages.download import import_folder
from cnnpipe.stages.export import DatasetSplits, export
from cnnpipe.stages.train import train
from cnnpipe.store.workspace import Workspace

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
# epochs each needs on the slice to be well past chance: torchvision's MobileNetV3 and EfficientNet keep BatchNorm
# running statistics with momentum 0.01, so their validation accuracy is at chance for the first epochs
NETWORKS = {"resnet18": 3, "torchvision:mobilenet_v3_small": 10, "torchvision:efficientnet_b0": 6, "timm:resnet10t": 4}


def slice_of_cifar(work: Path, per_class: int) -> Path:
    """``per_class`` training images of each class and the whole test split, as an image folder."""
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(work / "src", filter="data")
    src, folder = work / "src" / "cifar10-jpeg", work / "cifar"
    shutil.copytree(src / "test", folder / "test")
    for klass in sorted((src / "train").iterdir()):
        (folder / "train" / klass.name).mkdir(parents=True)
        for image in sorted(klass.iterdir())[:per_class]:
            shutil.copyfile(image, folder / "train" / klass.name / image.name)
    return folder


def plain_qdq(source: Path, target: Path, splits: DatasetSplits) -> None:
    """What a peer tool gives: ``quantize_static`` with its defaults, calibrated on the same 256 images."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader:  # onnxruntime's CalibrationDataReader
        def __init__(self, images: np.ndarray):
            self.batches = iter([{"input": images[i : i + 32]} for i in range(0, len(images), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(target), Reader(splits.calibration(256)))


def right_answers(path: Path, splits: DatasetSplits, threads: int) -> np.ndarray:
    from cnnpipe.formats.onnx import onnx_session

    session = onnx_session(path, "cpu", threads)
    return np.concatenate([session.run(None, {"input": x})[0].argmax(1) == y for x, y in splits.batches("test")])


def images_per_s(path: Path, shape: list[int], batch: int, threads: int, seconds: float) -> float:
    from cnnpipe.formats.onnx import onnx_session

    session = onnx_session(path, "cpu", threads)
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    return batch / time_calls(lambda: session.run(None, {"input": x}), seconds).mean()


def one_network(arch: str, root: Path, args: argparse.Namespace) -> list[str]:
    """Train, export with the ladder, quantize plainly, time; the table rows of one network."""
    trained = train(TrainConfig(arch=arch, dataset="cifar", epochs=args.epochs or NETWORKS[arch], batch_size=128,
                                optimizer="adamw", lr=2e-3, device="cpu", plots=False), root)
    bundle = export(trained.ref, ExportOptions(formats=("onnx", "openvino"), int8=True, bf16=True,
                                               max_int8_drop=args.limit), root)
    folder, ws = Path(bundle.path), Workspace(root)
    version = ws.models.resolve(trained.ref)
    desc = read_description(version)
    splits = DatasetSplits(ws, desc)
    fp32 = right_answers(folder / "model.onnx", splits, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.onnx"
        plain_qdq(folder / "model.onnx", plain, splits)
        plain_right = right_answers(plain, splits, args.threads)
        plain_speed = {b: images_per_s(plain, desc.input.shape, b, args.threads, args.seconds) for b in (1, 64)}
    timed = bench(bundle.ref, BenchOptions("1,64", args.seconds, args.threads), root)
    speed = {(r.format, r.batch): r.images_per_s for r in timed.rows}
    name = arch.split(":")[-1]
    plain_drop = paired_drop(int((fp32 & ~plain_right).sum()), int((plain_right & ~fp32).sum()), len(fp32))
    rows = [f"| {name} | fp32 onnxruntime | {fp32.mean():.4f} | | | {speed[('onnx', 1)]:,.0f} | "
            f"{speed[('onnx', 64)]:,.0f} |",
            f"| {name} | plain static QDQ (onnxruntime defaults) | {plain_right.mean():.4f} | "
            f"{plain_drop.point:+.2f} [{plain_drop.low:.2f}, {plain_drop.high:.2f}] | | "
            f"{plain_speed[1]:,.0f} ({plain_speed[1] / speed[('onnx', 1)]:.2f}x) | "
            f"{plain_speed[64]:,.0f} ({plain_speed[64] / speed[('onnx', 64)]:.2f}x) |"]
    for fmt, label in (("onnx-int8", "cnnpipe int8 ladder, onnxruntime"), ("openvino-int8", "cnnpipe int8 ladder, OpenVINO")):
        report = bundle.quantization.get(fmt, {})
        tried = "; ".join(f"{t['rung']} {t['drop']['point']:+.2f} (bound {t['drop']['high']:.2f})"
                          for t in report.get("tried", []) if "drop" in t)
        if not report.get("chosen"):
            rows.append(f"| {name} | {label}: refused | | | {tried} | | |")
            continue
        if not report.get("certified"):
            t = report["test"]
            rows.append(f"| {name} | {label}: **{report['chosen']}** passed validation, refused on test | "
                        f"{t['accuracy']:.4f} | {t['point']:+.2f} [{t['low']:.2f}, {t['high']:.2f}] | {tried} | | |")
            continue
        t, base = report["test"], ("onnx" if fmt == "onnx-int8" else "openvino")
        rows.append(f"| {name} | {label}: **{report['chosen']}** ({len(report['float_nodes'])} float) | {t['accuracy']:.4f} | "
                    f"{t['point']:+.2f} [{t['low']:.2f}, {t['high']:.2f}] | {tried} | "
                    f"{speed[(fmt, 1)]:,.0f} ({speed[(fmt, 1)] / speed[(base, 1)]:.2f}x) | "
                    f"{speed[(fmt, 64)]:,.0f} ({speed[(fmt, 64)] / speed[(base, 64)]:.2f}x) |")
    for fmt in ("openvino", "openvino-bf16"):
        if (fmt, 1) in speed:
            rows.append(f"| {name} | {fmt} | | | | {speed[(fmt, 1)]:,.0f} | {speed[(fmt, 64)]:,.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1500, help="training images per class")
    parser.add_argument("--epochs", type=int, default=None, help="for every network (default: NETWORKS' own)")
    parser.add_argument("--limit", type=float, default=1.0, help="--max-int8-drop")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per runtime and batch size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--networks", default=",".join(NETWORKS))
    args = parser.parse_args()
    if not ARCHIVE.is_file():
        raise SystemExit(f"{ARCHIVE.name} is not in ../shared/datasets")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "store"
        root.mkdir()
        import_folder(slice_of_cifar(work, args.per_class), DownloadOptions(dataset_name="cifar", plots=False), root)
        print(f"torch {torch.__version__}, {args.threads} threads, limit {args.limit} points on the bound; drops in points "
              "against fp32 on the 10,000 test images with their 95% interval; speed: images/s (x fp32 of its runtime)\n")
        print("| network | file | test accuracy | drop [95%] | ladder on validation: drop (bound) | batch 1 | batch 64 |")
        print("| --- | --- | ---: | --- | --- | ---: | ---: |")
        for arch in args.networks.split(","):
            for row in one_network(arch, root, args):
                print(row, flush=True)


if __name__ == "__main__":
    main()
