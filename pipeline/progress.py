"""Progress of long stages (export per format, verify per format and device, bench per runtime): a stage
calls ``step``; whoever runs it decides where the lines go (the CLI: stderr where it is a terminal and not under
``--json``, or wherever ``--progress`` asks). Without a sink a step costs nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_sink: Callable[[str], None] | None = None


def step(message: str) -> None:
    """Report that ``message`` (what starts now) begins."""
    if _sink is not None:
        _sink(message)


@contextmanager
def reporting(sink: Callable[[str], None] | None) -> Iterator[None]:
    """Send the steps of the stages run inside to ``sink``, each with the seconds since this began."""
    global _sink
    saved, start = _sink, time.monotonic()
    _sink = None if sink is None else (lambda message: sink(f"[{time.monotonic() - start:6.1f} s] {message}"))
    try:
        yield
    finally:
        _sink = saved
