"""A store on object storage against a store in a folder, on the same machine.

Starts moto's S3 server on 127.0.0.1 (IAM on, as in the tests) and times, each as a fresh
``cnnpipe`` process: the whole ``run`` (1 epoch, ONNX only), ``verify`` from an empty cache
(everything downloaded and checked) and again with the cache filled, and a commit of one
large file through the Store API (uploaded in multipart parts), with the process's peak RSS.
Prints a Markdown table; the folder store is the reference (ratio 1.00).

Usage: python benchmarks/s3_store.py [--mib 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from s3server import BUCKET, s3_server  # noqa: E402

COMMIT = """
import os, sys, resource
from pathlib import Path
from cnnpipe.store.remote import is_url, open_root
from cnnpipe.store import Workspace
root, mib = sys.argv[1], int(sys.argv[2])
root = open_root(root) if is_url(root) else Path(root)
with Workspace(root).models.draft("big") as draft:
    with open(draft.path / "blob.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    draft.commit("train", {}, {}, {})
"""


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one process."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        err.seek(0)
        assert os.waitstatus_to_exitcode(status) == 0, err.read()[-2000:].decode()
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the large file committed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, s3_server(Path(tmp) / "moto.log") as aws:
        tmp_path = Path(tmp)
        base = {k: v for k, v in os.environ.items() if not k.startswith("CNNPIPE_")}
        local = tmp_path / "local"
        local.mkdir()
        url = f"s3://{BUCKET}/bench"
        cli = [sys.executable, "-m", "cnnpipe"]
        rows = []
        for what, argv in [("run --epochs 1 --format onnx", ["run", "--epochs", "1", "--format", "onnx"]),
                           ("verify lenet5", ["verify", "lenet5"])]:
            ref = timed([*cli, "--root", str(local), *argv], base, tmp_path)
            cache = {"CNNPIPE_CACHE": str(tmp_path / f"c-{len(rows)}")}
            cold = timed([*cli, "--root", url, *argv], base | aws | cache, tmp_path)
            rows.append((what, "folder", *ref, 1.0))
            rows.append((what, "s3 (empty cache)", *cold, cold[0] / ref[0]))
            if what.startswith("verify"):
                warm = timed([*cli, "--root", url, *argv], base | aws | cache, tmp_path)
                rows.append((what, "s3 (cache filled)", *warm, warm[0] / ref[0]))
        what = f"commit one {args.mib} MiB file"
        ref = timed([sys.executable, "-c", COMMIT, str(local), str(args.mib)], base, tmp_path)
        big = base | aws | {"CNNPIPE_CACHE": str(tmp_path / "c-big")}
        remote = timed([sys.executable, "-c", COMMIT, url, str(args.mib)], big, tmp_path)
        rows += [(what, "folder", *ref, 1.0), (what, "s3 (multipart upload)", *remote, remote[0] / ref[0])]
    print("| what | store | s | peak RSS, MiB | time ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for what, store, seconds, rss, ratio in rows:
        print(f"| {what} | {store} | {seconds:.2f} | {rss:,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
