"""cnnpipe: train, evaluate, export and verify small CNN image classifiers for release."""

__version__ = "0.1.0"
