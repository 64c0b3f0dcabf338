"""Where the test suite's time goes, by command: sums the lines ``SUITE_TIMES=FILE pytest ...`` wrote.

    SUITE_TIMES=/tmp/times.jsonl pytest -q -n 2 --dist worksteal
    python benchmarks/suite_times.py /tmp/times.jsonl

Prints, for each cnnpipe command, how many times the suite ran it and its total, mean and largest
wall time (refused calls, exit code 2 or 1, apart, and calls ``cnnpipe_here`` made in the test's
own process); then the test files by their commands' total.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def _table(title: str, groups: dict[str, list[float]]) -> None:
    print(f"\n{title:<34} {'calls':>6} {'total s':>9} {'mean s':>8} {'max s':>7}")
    for key, times in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        print(f"{key:<34} {len(times):>6} {sum(times):>9.0f} {sum(times) / len(times):>8.1f} {max(times):>7.1f}")


def main(path: str) -> None:
    """Print the two tables for the records in ``path``."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_command: dict[str, list[float]] = defaultdict(list)
    by_file: dict[str, list[float]] = defaultdict(list)
    for record in records:
        command = next((a for a in record["args"] if not a.startswith("-")), "(none)")
        outcome = ("ok" if record["rc"] == 0 else f"exit {record['rc']}") + (", in-process" if record.get("here") else "")
        by_command[f"{command} ({outcome})"].append(record["seconds"])
        by_file[record["test"].split("::")[0] or "(fixture)"].append(record["seconds"])
    _table("command (outcome)", by_command)
    _table("test file", by_file)
    print(f"\n{len(records)} calls, {sum(r['seconds'] for r in records):.0f} s of wall time in all")


if __name__ == "__main__":
    main(sys.argv[1])
