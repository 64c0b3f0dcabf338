"""What a committed version may gain later (``ADDED_LATER``): verify's reports, signed statements,
the signature. Each is a new file, written atomically and never replaced, then uploaded where the
store is remote."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CnnpipeError
from ..fs import read_small, refuse_symlinks, writing
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


STATEMENT_SUFFIX = ".intoto.json"  # a signed verdict beside verify's reports (verification/statement.py)
REPORT_LIMIT = 4 * 1024 * 1024  # bytes of a verify report ls reads; a larger one is not verify's


def newest_verdict(version: Version) -> str | None:
    """What the newest verify report under ``version`` says ("passed"/"FAILED" and its time), read as an
    unsigned claim; "unreadable" for a report that is not verify's; None when there is none."""
    folder = version.path / REPORTS
    if folder.is_symlink() or not folder.is_dir():
        return None
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".json" and not p.name.endswith(STATEMENT_SUFFIX)
                   and not p.name.startswith("."))
    if not names:
        return None
    try:
        passed = json.loads(read_small(folder / names[-1], REPORT_LIMIT))["passed"]
    except (CnnpipeError, ValueError, KeyError, TypeError):
        return "unreadable report"
    if not isinstance(passed, bool):
        return "unreadable report"
    t = names[-1]  # YYYYmmddTHHMMSS…: report_path's UTC stamp
    return f"verify {'passed' if passed else 'FAILED'} {t[:4]}-{t[4:6]}-{t[6:8]} {t[9:11]}:{t[11:13]}:{t[13:15]} UTC"


def add_report(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (from ``report_path``) atomically, then upload it where the store is remote."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path.parent):
            tmp.write_text(text)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder report_path made, if this was to be its first file
            path.parent.rmdir()
        raise
    upload_addition(path)


def upload_addition(path: Path) -> None:
    """Upload a file just added to a committed version (a signature, a verify report) where its
    store is remote; one already there is never replaced."""
    if mirror := mirror_of(path):
        mirror.upload_as(path, path)
