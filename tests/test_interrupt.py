"""Ctrl-C during a module import is held until the import ends (an exception unwinding through a
native extension's initialiser aborts the process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from cnnpipe.cli import interrupt
interrupt.install()
try:
    import slow_module  # signals itself, then works on for 0.3 s
    sys.stdout.write("import finished\\n")  # one write: the held Ctrl-C lands right after the import, maybe mid-print
    time.sleep(5)
    print("never interrupted", flush=True)
except KeyboardInterrupt:
    print("interrupted after the import" if "slow_module" in sys.modules else "interrupted inside the import")
"""
MODULE = """
import os, signal, time
os.kill(os.getpid(), signal.SIGINT)
end = time.monotonic() + 0.3
while time.monotonic() < end:
    pass
"""


def test_an_interrupt_inside_an_import_is_delivered_after_it(tmp_path: Path):
    (tmp_path / "slow_module.py").write_text(MODULE)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["import finished", "interrupted after the import"], proc.stdout + proc.stderr
