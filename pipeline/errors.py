"""Errors that the CLI turns into one clear line and a documented exit code."""

from __future__ import annotations

EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class CnnpipeError(Exception):
    """A problem the user can fix: bad usage, bad input, a corrupt artifact (exit 2)."""

    exit_code = EXIT_USAGE


def first_line(e: BaseException) -> str:
    """The first line of an exception from a library (at most 200 characters), or its type's name."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # native runtimes (OpenVINO) put source locations before the reason: skip those lines
    reasons = [line for line in lines if not line.startswith("Exception from ") and " failed at src/" not in line]
    return (reasons or lines or [type(e).__name__])[0][:200]
