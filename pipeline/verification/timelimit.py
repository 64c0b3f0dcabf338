"""A time limit on one format's work, so a hostile but valid graph (a loop of hours) fails that
format instead of hanging verify, predict or bench.

The work runs in a daemon thread (the runtimes release the GIL). At the limit, the runtime
is asked to stop where it can (onnxruntime's ``RunOptions.terminate``). One that cannot be
stopped (the PyTorch runtimes; OpenVINO, whose ``cancel`` does not end a running Loop) is
left running and the format fails all the same; the process then ends with ``os._exit``
once its output is written (``finish``), since Python can neither join nor kill that thread.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import CnnpipeError, FormatTimeout

T = TypeVar("T")
DEFAULT_TIMEOUT = 1800.0  # seconds per format: generous, a real model on real images needs far less
TIMEOUT_HELP = ("Seconds each format may take to load and run before it fails with that reason "
                "(a graph that never ends).")
STOP_GRACE = 10.0  # seconds a runtime asked to stop has to return
_abandoned: list[threading.Thread] = []



@dataclass
class Deadline:
    """Where the work registers how to stop its runtime (``Runner.cancel``) once it has one."""

    cancel: Callable[[], None] | None = None


def check_timeout(seconds: float) -> None:
    """A usage error unless ``seconds`` is a positive, finite number."""
    if not 0 < seconds < math.inf:
        raise CnnpipeError(f"--timeout must be a positive number of seconds, not {seconds}")


class _ProcessOutput:
    """What silencing a runtime changes for the whole process (``sys.stdout``/``sys.stderr``, file
    descriptors 1 and 2, logging, warning filters), saved so it can be put back when the work that
    changed it is left behind."""

    def __enter__(self) -> _ProcessOutput:
        self.streams = sys.stdout, sys.stderr
        self.filters = list(warnings.filters)
        self.logging = logging.root.manager.disable
        self.fds = {fd: os.dup(fd) for fd in (1, 2)}
        return self

    def restore(self) -> None:
        sys.stdout, sys.stderr = self.streams
        warnings.filters[:] = self.filters
        logging.disable(self.logging)
        for fd, saved in self.fds.items():
            os.dup2(saved, fd)

    def __exit__(self, *exc: object) -> None:
        for saved in self.fds.values():
            os.close(saved)


def within(seconds: float, what: str, work: Callable[[Deadline], T]) -> T:
    """``work(deadline)``'s result, or ``FormatTimeout`` naming ``what`` after ``seconds``."""
    deadline, box = Deadline(), {}

    def run() -> None:
        try:
            box["result"] = work(deadline)
        except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name=f"cnnpipe {what}", daemon=True)
    with _ProcessOutput() as output:
        thread.start()
        try:
            thread.join(seconds)
        except BaseException:  # Ctrl-C while waiting: the work cannot be joined any more
            _abandoned.append(thread)
            output.restore()
            raise
        if thread.is_alive():
            output.restore()  # the work may be inside a runtime's silencing, which it will not undo in time
    if thread.is_alive():
        if deadline.cancel is not None:
            deadline.cancel()
            thread.join(STOP_GRACE)
        if thread.is_alive():
            _abandoned.append(thread)
            how = "its runtime cannot be stopped, so it runs on until cnnpipe exits"
        else:
            how = "its runtime stopped it"
        raise FormatTimeout(f"{what} did not finish within {seconds:g} s (--timeout); {how}")
    if "error" in box:
        raise box["error"]
    return box["result"]


def finish(code: int) -> None:
    """End the process now, flushing its output, if a format's work was left running; else return."""
    if _abandoned:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
