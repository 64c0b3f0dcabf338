"""The ``cnnpipe`` command line: thin commands that build options, call a stage and render its result."""

from __future__ import annotations

from typing import NoReturn

from . import interrupt


def main() -> NoReturn:
    """Console-script entry point. Ctrl-C is held off imports first, before the application and
    what it imports (numpy, typer, rich, the options) are loaded: an interrupt raised inside a
    class body there would surface as a ``RuntimeError`` traceback instead of exit 130."""
    interrupt.install()
    from .app import main as run

    run()
