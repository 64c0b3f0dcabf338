"""Ctrl-C that never aborts the process from inside a native extension.

Python raises ``KeyboardInterrupt`` at the next bytecode of the main thread. When that bytecode
runs during a module import, the exception can unwind through a native extension's initialiser
(PyTorch's, via pybind11), which cannot pass it on: the C++ runtime calls ``terminate`` and the
process aborts (exit -6) instead of ending with 130 and its cleanup. So an interrupt that lands
inside an import is held and delivered again shortly, until it lands outside one.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from ..errors import INTERRUPTED

REDELIVER_AFTER = 0.05  # seconds; an import of PyTorch takes about 2 s


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    if _importing(frame):
        timer = threading.Timer(REDELIVER_AFTER, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    INTERRUPTED.set()
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT this way in this process (main thread only, where Python delivers signals)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_interrupt)
