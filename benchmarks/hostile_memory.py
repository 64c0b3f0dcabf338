"""Peak memory and time of three hostile inputs (issue 26), each command in a fresh process:

1. ``cnnpipe verify --trust-native`` of a lenet5 bundle whose ``model.pt2`` and
   ``model.torchscript.pt`` hold a 1 GiB zip bomb in place of a weight (re-hashed);
2. ``cnnpipe download imagefolder`` of a folder of 3,000 classes (2 images each, 16x16), plots on;
3. ``cnnpipe predict`` on a 3 GB sparse file named ``huge.png``.

The peak is GNU time's maximum resident set size over the command and the processes it waited
for (verify runs each format in a worker process, which VmHWM of the command alone misses).
To measure another tree (the code before a
change), put its package first on the path: ``PYTHONPATH=DIR python benchmarks/hostile_memory.py``
where DIR holds a ``cnnpipe`` link to that tree's ``pipeline`` folder.

Usage: python benchmarks/hostile_memory.py [--classes 3000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import resign, zip_bomb  # noqa: E402  (the tests' hostile writer: a zip bomb, a re-hashed manifest)


def run(root: Path, *args: str) -> tuple[int, float, float, str]:
    """Exit code, peak RSS in MiB (the largest process of the command's tree), seconds and the last
    stderr line of one cnnpipe command."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "PEAK %M", sys.executable, "-m", "cnnpipe", "--root", str(root),
                           *args], capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    lines = proc.stderr.splitlines()
    peak = next((int(s.split()[1]) / 1024 for s in lines if s.startswith("PEAK ")), float("nan"))
    last = next((s for s in reversed(lines) if s.strip() and not s.startswith(("PEAK ", "Command exited"))), "")
    return proc.returncode, peak, seconds, last[:110]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=3000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        root.mkdir()
        code, *_ = run(root, "run", "--epochs", "1", "--format", "onnx", "--format", "pt2", "--format",
                      "torchscript", "--json")
        if code:
            sys.exit("cnnpipe run failed")
        bundle = root / "exports/lenet5/v1"
        for name, member in (("model.pt2", "/data/weights/weight_0"), ("model.torchscript.pt", "/data/0")):
            zip_bomb(bundle / name, member, 1024)
            resign(bundle, name)
        rows.append(("verify --trust-native, 1 GiB zip bombs in pt2 and TorchScript",
                     *run(root, "verify", "lenet5", "--samples", "64", "--trust-native")))

        folder = Path(tmp) / "classes"
        rng = np.random.default_rng(0)
        for c in range(args.classes):
            (folder / f"c{c:04d}").mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"c{c:04d}" / f"{i}.png")
        rows.append((f"download imagefolder, {args.classes:,} classes, plots on",
                     *run(root, "download", "imagefolder", str(folder), "--name", "many", "--size", "16", "--json")))

        huge = Path(tmp) / "huge.png"
        with open(huge, "wb") as f:
            f.truncate(3 << 30)
        rows.append(("predict on a 3 GB sparse huge.png", *run(root, "predict", str(huge), "--bundle", "lenet5")))
    print(f"{'command':<64} {'exit':>4} {'peak MiB':>9} {'s':>7}  last line")
    for what, code, peak, seconds, last in rows:
        print(f"{what:<64} {code:>4} {peak:>9,.1f} {seconds:>7.1f}  {last}")


if __name__ == "__main__":
    main()
