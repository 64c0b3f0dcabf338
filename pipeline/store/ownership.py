"""Who owns work in progress: a live writer holds an ``flock`` on ``.owner`` inside its folder.

A draft or a training run is removed by anyone but its writer only when no process holds
that lock. The kernel (or the NFS lock manager) drops it when the writer dies, however it
dies, so liveness holds across PID namespaces (containers sharing a volume) and hosts,
where a PID means nothing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CnnpipeError

OWNER = ".owner"
_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC  # write mode: NFS emulates flock with POSIX locks


@contextmanager
def owned(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder``'s owner lock while the block runs; a usage error if a live process holds it."""
    fd = os.open(folder / OWNER, _FLAGS | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CnnpipeError(f"{folder}: {what} is in use by another live process; wait for it to end") from None
        yield
    finally:
        os.close(fd)


def abandoned(folder: Path) -> bool:
    """True when no live process owns ``folder`` (its writer died, or never took the lock)."""
    try:
        fd = os.open(folder / OWNER, _FLAGS)
    except FileNotFoundError:
        return True
    except OSError:  # a link or anything odd: not ours to judge, leave it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
