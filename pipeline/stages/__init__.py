"""The pipeline's stages as plain functions: the CLI and Python callers share them."""
