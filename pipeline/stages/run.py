"""The whole release pipeline as one library call: download, train, evaluate with gates, export, verify."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.catalog import CATALOG
from ..errors import CnnpipeError
from ..options.commands import DownloadOptions, EvaluateOptions, RunOptions
from ..store.workspace import Workspace
from ..training.engine import Progress
from ..verification.signing import Trust
from .download import download
from .evaluate import evaluate
from .export import export
from .train import train
from .verify import verify

Stage = Callable[[str, Any], None]


@dataclass
class RunResult:
    """Each stage's result (None for a stage that did not run); ``failed`` names the stage whose gate failed."""

    download: Any = None
    train: Any = None
    evaluate: Any = None
    export: Any = None
    verify: Any = None
    failed: str | None = None

    @property
    def passed(self) -> bool:
        return self.failed is None


def run(
    options: RunOptions,
    root: Path = Path("."),
    *,
    trust_code: bool = False,
    progress: Progress | None = None,
    on_stage: Stage | None = None,
) -> RunResult:
    """Run every stage as a CI release job would, stopping at the first failed gate.

    A standard dataset is fetched (or an intact version reused; ``options.size`` resizes it on
    download); an imported folder is used as it is. ``options.skip_train`` releases the newest
    version of the model ``options.train.name`` (default from its ``arch``) as it is, for
    weights brought in with ``import``. ``options.gates.against`` is pinned before training, so
    ``NAME`` means the version that was latest when the run started. ``on_stage(name,
    result)`` is called after each stage. A network from the user's file is trusted for the
    stages after training: this call already ran that file to train it, and the copy it
    rebuilds from is checked by sha256; with ``skip_train`` it runs only with ``trust_code``.
    Bad input raises ``CnnpipeError`` before anything is written.
    """
    config, gates = options.train, options.gates
    options.validate()
    resolved = config.resolved()
    models = Workspace(root).models
    against = models.resolve(gates.against).ref if gates.against else None
    trusted = trust_code or not options.skip_train
    if options.skip_train and not models.has(resolved.name):
        raise CnnpipeError(f"--skip-train: no model {resolved.name!r} in the store; train it, or bring its weights "
                           "with `cnnpipe import`, first (or name it with --name)")
    result = RunResult()

    def done(stage: str, value: Any) -> Any:
        setattr(result, stage, value)
        if on_stage is not None:
            on_stage(stage, value)
        return value

    if options.skip_train:
        model_ref = models.latest(resolved.name).ref
    else:
        if config.dataset in CATALOG:
            done("download", download(config.dataset, DownloadOptions(mirror=options.mirror, size=options.size,
                                                                              plots=config.plots), root))
        model_ref = done("train", train(config, root, progress)).ref
    evaluation = done("evaluate", evaluate(model_ref, EvaluateOptions(
        split="test", device=config.device, against=against, min_accuracy=gates.min_accuracy,
        max_regression=gates.max_regression, gate_on=gates.gate_on, plots=config.plots), root, trust_code=trusted))
    if not evaluation.passed:
        result.failed = "evaluate"
        return result
    bundle = done("export", export(model_ref, options.export, root, trust_code=trusted))
    if not bundle.passed:  # int8 beyond its limit: the bundle is written without it, and the release stops
        result.failed = "export"
        return result
    # the bundle this process just built: its native code (--aoti) is its own
    verdict = done("verify", verify(bundle.ref, options.verify, root, trust_code=trusted, trust=Trust(native=True)))
    if not verdict.passed:
        result.failed = "verify"
    return result
