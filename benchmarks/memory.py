"""Peak RSS of `cnnpipe download imagefolder` importing 10,000 images at several sizes (against
the target: twice the uint8 split plus 500 MB), of `cnnpipe predict` on thousands of image
files and of `cnnpipe verify --full` on test splits of different sizes, each command in a
fresh process.

The peak is the process's VmHWM from /proc (Linux), which starts afresh at exec; ru_maxrss
would carry over this script's own memory into the child.

Usage: python benchmarks/memory.py [--counts 1000,4000,16000] [--import-sizes 32,64,128]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_cpu import write_folder  # noqa: E402  (the 10,000 shipped digits as PNG files)

CHILD = """
import sys
from cnnpipe.cli import main
sys.argv = ["cnnpipe", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(f"MAXRSS {hwm.split()[1]}", file=sys.stderr)
"""


def peak_rss_mb(root: Path, *args: str) -> float:
    """Run one cnnpipe command in a fresh process; its peak resident memory in MiB."""
    proc = subprocess.run([sys.executable, "-c", CHILD, "--root", str(root), *args],
                          capture_output=True, text=True, check=False)
    line = next((s for s in proc.stderr.splitlines() if s.startswith("MAXRSS ")), None)
    if proc.returncode or line is None:
        sys.exit(f"cnnpipe {' '.join(args[:2])} failed:\n{proc.stderr[-2000:]}")
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,4000,16000")
    parser.add_argument("--import-sizes", default="32,64,128")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root / "digits")
        folder = root / "digits" / "train"  # 10,000 digits in class folders
        images = sum(1 for _ in folder.rglob("*.png"))
        print(f"{'command':<58} {'images':>7} {'uint8 MiB':>10} {'peak RSS MiB':>13} {'target MiB':>11}")
        for size in (int(s) for s in args.import_sizes.split(",")):
            rss = peak_rss_mb(root, "download", "imagefolder", str(folder), "--name", f"rgb{size}", "--size",
                              str(size), "--channels", "3", "--no-plots", "--json")
            split = images * 3 * size * size / 2**20
            print(f"{f'cnnpipe download imagefolder --size {size} --channels 3':<58} {images:>7,} {split:>10.1f} "
                  f"{rss:>13.1f} {2 * split + 500:>11.1f}")
        for command in (
            ["run", "--epochs", "1", "--format", "onnx", "--format", "safetensors"],
            ["download", "imagefolder", str(root / "digits"), "--name", "digits", "--size", "28", "--channels", "1",
             "--no-flip", "--no-plots"],
            ["train", "--dataset", "digits", "--epochs", "1"],
            ["export", "lenet5", "--format", "onnx", "--format", "safetensors"],
        ):
            subprocess.run([sys.executable, "-m", "cnnpipe", "--root", str(root), *command],
                           check=True, capture_output=True)
        pngs = sorted((root / "digits" / "test").rglob("*.png"))
        print(f"{'command':<46} {'images':>7} {'peak RSS MiB':>13}")
        for count in counts:
            files = [str(pngs[i % len(pngs)]) for i in range(count)]
            rss = peak_rss_mb(root, "predict", *files, "--bundle", "lenet5@v1", "--json")
            print(f"{'cnnpipe predict --bundle lenet5@v1 (onnxruntime)':<46} {count:>7,} {rss:>13.1f}")
        for bundle, images in (("lenet5@v1", 2000), ("lenet5@v2", 10000)):
            rss = peak_rss_mb(root, "verify", bundle, "--full", "--json")
            print(f"{'cnnpipe verify ' + bundle + ' --full':<46} {images:>7,} {rss:>13.1f}")


if __name__ == "__main__":
    main()
