"""Conformance of torchvision's classification architectures with cnnpipe's release path.

For each architecture (``torchvision.models.list_models(module=torchvision.models)``): build
it at the smallest input side it takes (the first of SIZES that ``cnnpipe models --model``
accepts), train one short epoch (two steps of 8 RGB images) on a tiny real image folder,
export each of FORMATS as its own bundle (a format converted from ONNX with model.onnx beside
it), and verify each bundle in its own runtime on the folder's test images. Every
architecture runs in its own process with a time limit; one over ``--max-params`` is listed
as not run. Prints a Markdown table: per architecture and
format, pass or the one-line reason it failed.

``--models`` also takes any other ``--model`` reference (``timm:resnet10t``).
Usage: python benchmarks/conformance.py [--models a,b] [--jobs 1] [--timeout 900] [--max-params 150e6] [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FORMATS = ("onnx", "pt2", "safetensors", "torchscript", "litert", "ncnn", "mnn")
SIZES = (32, 56, 64, 96, 128, 224, 256)  # 56: a multiple of 14 and 8, for ViT-H/14
CLASSES, TRAIN, HELD_OUT = 2, 8, 2  # per class: 16 training images make two steps of 8


def tiny_folder(path: Path) -> Path:
    """Real MNIST digits 0 and 1 (shipped with cnnpipe) as RGB PNGs in train/val/test class folders."""
    shipped = resources.files("cnnpipe.data") / "mnist-sample"
    images = np.frombuffer(gzip.decompress((shipped / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    labels = np.frombuffer(gzip.decompress((shipped / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:], np.uint8)
    images = images.reshape(-1, 28, 28)
    for label in range(CLASSES):
        picked = np.flatnonzero(labels == label)[: TRAIN + 2 * HELD_OUT]
        counts = {"train": TRAIN, "val": HELD_OUT, "test": HELD_OUT}
        start = 0
        for split, n in counts.items():
            folder = path / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in picked[start : start + n]:
                Image.fromarray(images[i]).convert("RGB").save(folder / f"{i}.png")
            start += n
    return path


def run_one(name: str, root: Path, folder: Path, max_params: float) -> dict[str, Any]:
    """Build, train, export and verify ``torchvision:NAME`` in this process; the row of the table."""
    from cnnpipe.errors import CnnpipeError, first_line
    from cnnpipe.formats import FORMATS as FORMAT_TABLE
    from cnnpipe.nets.registry import param_count
    from cnnpipe.nets.sources import build_arch
    from cnnpipe.options import DownloadOptions, ExportOptions, TrainConfig
    from cnnpipe.stages.download import import_folder
    from cnnpipe.stages.export import export
    from cnnpipe.stages.train import train
    from cnnpipe.stages.verify import verify

    arch = name if ":" in name else f"torchvision:{name}"
    row: dict[str, Any] = {"model": name, "size": None, "params": None, "formats": {}}
    errors = []
    for size in SIZES:
        try:
            row["params"] = param_count(build_arch(arch, 3, size, CLASSES)[0])
            row["size"] = size
            break
        except CnnpipeError as e:
            errors.append(str(e))
    if row["size"] is None:
        row["error"] = f"no input side in {SIZES} builds: {errors[-1]}"
        return row
    if row["params"] > max_params:
        row["error"] = f"not run: {row['params'] / 1e6:.0f}M parameters, over --max-params"
        return row
    dataset = f"tiny{row['size']}"
    import_folder(folder, DownloadOptions(dataset_name=dataset, size=row["size"], plots=False), root)
    start = time.perf_counter()
    try:
        model = train(TrainConfig(arch=arch, dataset=dataset, name="net", epochs=1, batch_size=8,
                                  device="cpu", compile="off"), root)
    except Exception as e:  # the row records any failure, one line
        row["error"] = f"train: {type(e).__name__}: {first_line(e)}"
        return row
    row["train_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    try:  # every format in one bundle and one verify; a format that cannot be exported: each on its own
        row["formats"] = _judged(export(model.ref, ExportOptions(formats=FORMATS), root).ref, FORMATS, root, verify)
    except CnnpipeError:
        for fmt in FORMATS:
            needs = FORMAT_TABLE[fmt].needs
            try:
                bundle = export(model.ref, ExportOptions(formats=(needs, fmt) if needs else (fmt,)), root)
                row["formats"][fmt] = _judged(bundle.ref, (fmt,), root, verify)[fmt]
            except Exception as e:  # export refusals and crashes alike become the cell's reason
                row["formats"][fmt] = {"result": f"export: {type(e).__name__}: {first_line(e)}"}
    row["export_verify_s"] = round(time.perf_counter() - start, 1)
    return row


def _judged(bundle: str, formats: tuple[str, ...], root: Path, verify: Any) -> dict[str, dict[str, str]]:
    """Each of ``formats``' verdict in one verify of ``bundle``: pass, or its reasons."""
    from cnnpipe.options import VerifyOptions

    verdict = verify(bundle, VerifyOptions(batch_sizes="1,2", samples=CLASSES * HELD_OUT), root)
    cells = {}
    for fmt in formats:
        reports = [r for r in verdict.formats if r.format == fmt]
        failed = [reason for r in reports for reason in r.reasons if not r.passed]
        passed = bool(reports) and all(r.passed for r in reports)
        cells[fmt] = {"result": "pass" if passed else "verify: " + "; ".join(failed or [verdict.integrity])}
    return cells


def run_isolated(name: str, root: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``run_one`` in a child process, bounded by ``--timeout``."""
    command = [sys.executable, __file__, "--one", name, "--root", str(root), "--folder", str(folder),
               "--max-params", str(args.max_params)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "error": f"not finished in {args.timeout:.0f} s", "formats": {}}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": name, "error": f"crashed (exit {proc.returncode}): {tail[:200]}", "formats": {}}
    return json.loads(lines[-1])


def cell(row: dict[str, Any], fmt: str) -> str:
    if fmt not in row["formats"]:
        return "-"
    result = row["formats"][fmt]["result"]
    return "pass" if result == "pass" else "FAIL: " + result.replace("|", "/")[:300]


def table(rows: list[dict[str, Any]]) -> str:
    head = ["architecture", "input", "params", *FORMATS, "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        params = f"{r['params'] / 1e6:.1f}M" if r.get("params") else "-"
        size = f"3x{r['size']}x{r['size']}" if r.get("size") else "-"
        lines.append("| " + " | ".join([r["model"], size, params, *(cell(r, f) for f in FORMATS),
                                        r.get("error", "").replace("|", "/")[:300]]) + " |")
    passed = {f: sum(cell(r, f) == "pass" for r in rows) for f in FORMATS}
    lines.append("")
    lines.append(f"{len(rows)} architectures; passed: " + ", ".join(f"{f} {n}" for f, n in passed.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated torchvision names, or any --model references such as "
                        "timm:NAME (default: every torchvision classification model)")
    parser.add_argument("--jobs", type=int, default=1, help="architectures run at once")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per architecture")
    parser.add_argument("--max-params", type=float, default=150e6, help="larger architectures are listed as not run")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.root, args.folder, args.max_params)))
        return

    import torchvision

    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_folder(Path(tmp) / "images")
        roots = [Path(tmp) / f"store{i}" for i in range(len(names))]  # one store each: no shared dataset races
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = []
            for row in pool.map(lambda pair: run_isolated(pair[0], pair[1], folder, args), zip(names, roots)):
                rows.append(row)
                print(f"{row['model']}: " + ", ".join(f"{f} {cell(row, f)[:60]}" for f in FORMATS)
                      + (f" ({row['error']})" if row.get("error") else ""), file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"torch {__import__('torch').__version__}, torchvision {torchvision.__version__}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
