"""A fresh process's ExecuTorch lowering (``to_edge_transform_and_lower`` with the XNNPACK partitioner, then
``to_executorch``), upstream as it is against cnnpipe's ``unmatchable_patterns_skipped``: each way in new
processes, alternating; prints a Markdown table (median of the rounds) and whether the bytes are the same.

    python benchmarks/xnnpack_lowering.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SCRIPT = """
import hashlib, json, sys, time, torch
from contextlib import nullcontext
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower
from cnnpipe.formats.xnnpack_patterns import unmatchable_patterns_skipped
from cnnpipe.nets.registry import build, get_net
spec = get_net(sys.argv[1])
torch.manual_seed(0)
model = build(spec.name, spec.channels, spec.size, 10).eval()
program = torch.export.export(model, (torch.randn(2, spec.channels, spec.size, spec.size),))
start = time.perf_counter()
with (unmatchable_patterns_skipped if sys.argv[2] == "skip" else nullcontext)():
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
data = lowered.to_executorch().buffer
print(json.dumps({"seconds": time.perf_counter() - start, "sha256": hashlib.sha256(data).hexdigest()}))
"""
WAYS = {"plain": "upstream passes as they are", "skip": "cnnpipe (unmatchable patterns skipped)"}


def lower(net: str, way: str) -> dict[str, float | str]:
    """Seconds of one lowering in a fresh interpreter, and the program's sha256."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, net, way], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nets", default="lenet5,resnet18")
    args = parser.parse_args()
    print("| network | lowering | median s | runs | ratio | same bytes |\n| --- | --- | ---: | --- | ---: | --- |")
    for net in args.nets.split(","):
        found: dict[str, list[dict[str, float | str]]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                found[way].append(lower(net, way))
        digests = {r["sha256"] for runs in found.values() for r in runs}
        base = statistics.median(float(r["seconds"]) for r in found["plain"])
        for way, runs in found.items():
            times = [float(r["seconds"]) for r in runs]
            print(f"| {net} | {WAYS[way]} | {statistics.median(times):.1f} | {', '.join(f'{t:.1f}' for t in times)} "
                  f"| {base / statistics.median(times):.2f} | {'yes' if len(digests) == 1 else 'NO'} |")


if __name__ == "__main__":
    main()
