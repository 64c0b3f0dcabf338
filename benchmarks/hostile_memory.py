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
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


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


def bomb(bundle: Path, name: str, suffix: str, mib: int) -> None:
    """Replace the member ending in ``suffix`` by ``mib`` MiB of deflated zeros and re-hash the manifest."""
    path, new = bundle / name, bundle / (name + ".new")
    with zipfile.ZipFile(path) as a, zipfile.ZipFile(new, "w") as b:
        target = next(m.filename for m in a.infolist() if m.filename.endswith(suffix))
        for m in a.infolist():
            if m.filename != target:
                b.writestr(m, a.read(m.filename))
        info = zipfile.ZipInfo(target)
        info.compress_type = zipfile.ZIP_DEFLATED
        with b.open(info, "w", force_zip64=True) as f:
            for _ in range(mib):
                f.write(bytes(1 << 20))
    new.replace(path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = path.read_bytes()
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


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
        bomb(bundle, "model.pt2", "/data/weights/weight_0", 1024)
        bomb(bundle, "model.torchscript.pt", "/data/0", 1024)
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
