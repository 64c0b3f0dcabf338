"""Data-parallel training on several processes of this machine: the command re-run under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from ..errors import CnnpipeError


def check_nproc(nproc: int) -> None:
    """A usage error unless ``nproc`` is between 1 and this machine's CPU cores."""
    cores = os.cpu_count() or 1
    if not 1 <= nproc <= cores:
        raise CnnpipeError(f"--nproc must be between 1 and {cores} (this machine's CPU cores), not {nproc}")


def relaunch(nproc: int, argv: list[str]) -> int:
    """Re-run ``cnnpipe ARGV`` (its ``--nproc`` dropped) under torchrun with ``nproc`` processes
    rendezvousing on 127.0.0.1; returns torchrun's exit code."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "cnnpipe", *args,
    ]
    return subprocess.run(command).returncode


def is_main_process() -> bool:
    """Whether this is rank 0 of a torchrun launch (or not under torchrun): the one that reports."""
    return int(os.environ.get("RANK", "0")) == 0
