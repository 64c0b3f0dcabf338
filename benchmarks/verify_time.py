"""Wall time of ``cnnpipe verify`` on lenet5 with every base format: this tree against a baseline commit.

Each side gets its own root (download mnist-sample, train one epoch, export every base format with
its own code), then the two verifies are timed alternately, ``--rounds`` times each, in fresh
processes on the same machine. The baseline runs from a ``git worktree`` of ``--baseline``.

    python benchmarks/verify_time.py --baseline 1ccd120 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cnnpipe(package_parent: Path, root: Path, *args: str) -> float:
    env = os.environ | {"PYTHONPATH": str(package_parent)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cnnpipe", "--root", str(root), *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cnnpipe {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return time.perf_counter() - start


def _side(work: Path, name: str, pipeline: Path) -> tuple[Path, Path]:
    """A folder whose ``cnnpipe`` is ``pipeline``, and a root holding a bundle it exported."""
    parent = work / f"{name}-pkg"
    parent.mkdir()
    (parent / "cnnpipe").symlink_to(pipeline)
    root = work / f"{name}-root"
    root.mkdir()
    _cnnpipe(parent, root, "download", "mnist-sample")
    _cnnpipe(parent, root, "train", "--epochs", "1")
    _cnnpipe(parent, root, "export", "lenet5")
    return parent, root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="verify-time-") as tmp:
        work = Path(tmp)
        baseline = work / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline],
                       check=True, capture_output=True)
        try:
            sides = {"baseline " + args.baseline: _side(work, "baseline", baseline / "pipeline"),
                     "this tree": _side(work, "tree", REPO / "pipeline")}
            times: dict[str, list[float]] = {label: [] for label in sides}
            for _ in range(args.rounds):
                for label, (parent, root) in sides.items():
                    times[label].append(_cnnpipe(parent, root, "verify", "lenet5"))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], capture_output=True)
    reference = statistics.median(times["baseline " + args.baseline])
    print("| code | verify wall s (median) | runs | ratio |")
    print("| --- | ---: | --- | ---: |")
    for label, runs in times.items():
        median = statistics.median(runs)
        print(f"| {label} | {median:.1f} | {', '.join(f'{t:.1f}' for t in runs)} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
