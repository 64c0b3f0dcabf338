"""What loading a .pte costs a fresh process before the first inference: ExecuTorch's own
``from executorch.runtime import Runtime`` against cnnpipe's loader (``formats.executorch.runtime``),
each in new processes, alternating; prints a Markdown table (median of the rounds).

    python benchmarks/executorch_import.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

WAYS = {
    "executorch.runtime (upstream import)": "from executorch.runtime import Runtime",
    "cnnpipe.formats.executorch.runtime()": "from cnnpipe.formats.executorch import runtime; runtime()",
}


def seconds(code: str) -> float:
    """Wall seconds of a fresh interpreter that runs ``code`` (torch is imported by both ways)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    for _ in range(args.rounds):
        for name, code in WAYS.items():
            times[name].append(seconds(code))
    base = statistics.median(times[next(iter(WAYS))])
    print("| way | median s | ratio |\n| --- | ---: | ---: |")
    for name, found in times.items():
        print(f"| {name} | {statistics.median(found):.2f} | {base / statistics.median(found):.2f} |")


if __name__ == "__main__":
    main()
