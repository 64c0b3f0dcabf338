"""Options declared once, one record per command, each with one ``validate()``: ``fields`` (how an
option is declared, the choice sets, shared checks), ``training``, ``release`` (export, verify,
signature, gates) and ``commands`` (download, evaluate, bench, predict, publish, gc)."""

from .commands import BenchOptions, DownloadOptions, EvaluateOptions, GcOptions, PredictOptions, PublishOptions
from .release import ExportOptions, GateOptions, SignatureOptions, VerifyOptions
from .training import TrainConfig

__all__ = ["BenchOptions", "DownloadOptions", "EvaluateOptions", "ExportOptions", "GateOptions", "GcOptions",
           "PredictOptions", "PublishOptions", "SignatureOptions", "TrainConfig", "VerifyOptions"]
