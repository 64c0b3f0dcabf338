"""Errors that the CLI turns into one clear line and a documented exit code."""

from __future__ import annotations

EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class CnnpipeError(Exception):
    """A problem the user can fix: bad usage, bad input, a corrupt artifact (exit 2)."""

    exit_code = EXIT_USAGE
