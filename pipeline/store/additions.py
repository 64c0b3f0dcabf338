"""What a committed version may gain later (``ADDED_LATER``): verify's reports, signed statements,
the signature. Each is a new file, written atomically and never replaced, then uploaded where the
store is remote."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from ..fs import refuse_symlinks, writing
from .remote import mirror_of
from .version import REPORTS, Version


def report_path(version: Version, suffix: str) -> Path:
    """A new file under ``version``'s ``verify/`` folder, named by UTC time, host and process, so runs on
    different machines never overwrite each other (the folder is made; a symbolic link is refused)."""
    folder = version.path / REPORTS
    refuse_symlinks(folder)
    folder.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40]
    return folder / f"{stamp}-{host}-{os.getpid()}{suffix}"


def add_report(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (from ``report_path``) atomically, then upload it where the store is remote."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path.parent):
            tmp.write_text(text)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    upload_addition(path)


def upload_addition(path: Path) -> None:
    """Upload a file just added to a committed version (a signature, a verify report) where its
    store is remote; one already there is never replaced."""
    if mirror := mirror_of(path):
        mirror.upload_as(path, path)
