"""Every error the CLI turns into one clear line and a documented exit code, in one place.

A stage raises the subclass that names the kind of failure, so callers and tests can tell
them apart without reading the wording; the CLI prints ``str(e)`` and exits ``e.exit_code``.
"""

from __future__ import annotations

import threading

EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class CnnpipeError(Exception):
    """A problem the user can fix: bad usage, bad input, a corrupt artifact (exit 2)."""

    exit_code = EXIT_USAGE


class MissingExtra(CnnpipeError):
    """An optional runtime is not installed; the message names its pip extra (exit 2)."""


class ExportFailed(CnnpipeError):
    """An exporter produced no file (its exception is the cause; exit 2)."""


class LoadFailed(CnnpipeError):
    """A runtime cannot load a file of a bundle (exit 2 where it stops a command; a failed row in verify and bench)."""


class NativeCodeRefused(CnnpipeError):
    """A file holding native code was not loaded: no verified signature and no --trust-native (exit 2)."""


class FormatTimeout(CnnpipeError):
    """A format's work did not finish within its time limit."""


class GateFailed(CnnpipeError):
    """A release gate failed (exit 1)."""

    exit_code = EXIT_GATE


class ChecksumError(GateFailed):
    """A fetched file is not the published one (corrupt, truncated or replaced): exit 1."""


class SignatureError(GateFailed):
    """A bundle's signature is missing, invalid, or made with another key: exit 1."""


class NotVerified(GateFailed):
    """The bundle has no proof that it passed verify: it is not published or signed (exit 1, a failed gate)."""


def printable(text: str) -> str:
    """``text`` on one line: control characters (a newline in a path) written as escapes, never acted on."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def first_line(e: BaseException) -> str:
    """The first line of an exception from a library (at most 200 characters), or its type's name."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # native runtimes (OpenVINO) put source locations before the reason: skip those lines
    reasons = [line for line in lines if not line.startswith("Exception from ") and " failed at src/" not in line]
    return (reasons or lines or [type(e).__name__])[0][:200]


class RollbackWarning(UserWarning):
    """``latest`` names an older version than the newest complete one (moved back, or a writer stopped
    between its commit and the pointer): said on stderr; with ``--require-signature`` it fails."""


INTERRUPTED = threading.Event()  # set once Ctrl-C was raised in this process (cli.interrupt)


def interrupt_first(error: BaseException) -> None:
    """Raise ``KeyboardInterrupt`` again when a native library turned a Ctrl-C raised inside it into
    another error (torch: "could not determine the shape of object type ..."), so it ends with 130."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt from error
