"""Files on disk: hashing, strict JSON, bounded reads of untrusted files, and writes whose
failure on a full disk (or a native writer's abort) is reported as a write that failed."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CnnpipeError


def sha256_file(path: Path, fsync: bool = False) -> str:
    """sha256 of a file's bytes; with ``fsync`` also flush it to disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename or a new file in it is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON's null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON (no NaN or Infinity, which other parsers reject): a non-finite number is written as null."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (the stores' one JSON style)."""
    path.write_text(dumps(obj, indent=2, sort_keys=False) + "\n")


def write_through_memory(path: Path, save: Callable[[BinaryIO], Any]) -> None:
    """``save`` into memory, then write the bytes to ``path``: PyTorch's native zip writer
    (``torch.save``, ``torch.export.save``, ``torch.jit.save``) aborts the whole process when the
    disk fills under it, where Python's own write raises an OSError that can be reported."""
    buffer = io.BytesIO()
    save(buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def refuse_symlinks(*paths: Path) -> None:
    """A usage error if any of ``paths`` is a symbolic link (nothing is written through one)."""
    for path in paths:
        if path.is_symlink():
            raise CnnpipeError(f"{path}: is a symbolic link; artifacts must hold plain folders and files, and "
                               "nothing is written through a link")


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (no symlink, FIFO or device is opened,
    so a hostile one cannot hang or flood the reader); a usage error otherwise, never echoing content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise CnnpipeError(f"{path}: cannot be read as a plain file ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CnnpipeError(f"{path}: not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise CnnpipeError(f"{path}: over {limit:,} bytes, too large to be what it should be")
    return data


FULL_BELOW = 64 * 1024  # bytes free under which a failed write is taken for a full disk
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


@contextmanager
def writing(dest: Path) -> Iterator[None]:
    """Report a write under ``dest`` that failed for want of space, inodes or permission as an
    ``OSError`` naming ``dest``, whatever raised it: a ``write()`` that names no file, a native
    writer's ``RuntimeError``, or an exporter's wrapped error on a disk found full."""
    try:
        yield
    except Exception as e:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            raise OSError(e.errno, e.strerror, e.filename or str(dest)) from None
        try:
            st = os.statvfs(dest)
        except OSError:
            raise e from None
        if st.f_favail == 0 or st.f_bavail * st.f_frsize < FULL_BELOW:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest)) from None
        raise
