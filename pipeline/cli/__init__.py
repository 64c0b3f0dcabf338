"""The ``cnnpipe`` command line: thin commands that build options, call a stage and render its result."""

from .app import app, main

__all__ = ["app", "main"]
