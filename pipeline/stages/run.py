"""The whole release pipeline as one library call: download, train, evaluate with gates, export, verify."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.catalog import CATALOG
from ..errors import CnnpipeError
from ..options import ExportOptions, GateOptions, TrainConfig, VerifyOptions
from ..store.workspace import Workspace
from ..training.engine import Progress
from ..verification.signing import Trust
from .download import download
from .evaluate import check_gate_options, evaluate
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
    config: TrainConfig,
    export_options: ExportOptions | None = None,
    verify_options: VerifyOptions | None = None,
    gates: GateOptions | None = None,
    *,
    root: Path = Path("."),
    mirror: str | None = None,
    size: int | None = None,
    skip_train: bool = False,
    trust_code: bool = False,
    progress: Progress | None = None,
    on_stage: Stage | None = None,
) -> RunResult:
    """Run every stage as a CI release job would, stopping at the first failed gate.

    A standard dataset is fetched (or an intact version reused; ``size`` resizes it on
    download); an imported folder is used as it is. ``skip_train`` releases the newest
    version of the model ``config.name`` (default from ``config.arch``) as it is, for
    weights brought in with ``import``. ``gates.against`` is pinned before training, so
    ``NAME`` means the version that was latest when the run started. ``on_stage(name,
    result)`` is called after each stage. A network from the user's file is trusted for the
    stages after training: this call already ran that file to train it, and the copy it
    rebuilds from is checked by sha256; with ``skip_train`` it runs only with ``trust_code``.
    Bad input raises ``CnnpipeError`` before anything is written.
    """
    export_options = export_options or ExportOptions()
    verify_options = verify_options or VerifyOptions()
    gates = gates or GateOptions()
    resolved = config.resolved()
    check_gate_options(gates.min_accuracy, gates.against, gates.max_regression)
    export_options.chosen(), verify_options.check()  # every stage's usage errors before any work
    if size is not None and (skip_train or config.dataset not in CATALOG):
        raise CnnpipeError("--size resizes a standard dataset on download; "
                           f"{'a trained model' if skip_train else config.dataset} keeps the size it was stored at")
    models = Workspace(root).models
    against = models.resolve(gates.against).ref if gates.against else None
    trusted = trust_code or not skip_train
    if skip_train and not models.has(resolved.name):
        raise CnnpipeError(f"--skip-train: no model {resolved.name!r} in the store; train it, or bring its weights "
                           "with `cnnpipe import`, first (or name it with --name)")
    result = RunResult()

    def done(stage: str, value: Any) -> Any:
        setattr(result, stage, value)
        if on_stage is not None:
            on_stage(stage, value)
        return value

    if skip_train:
        model_ref = models.latest(resolved.name).ref
    else:
        if config.dataset in CATALOG:
            done("download", download(config.dataset, root, mirror, size=size))
        model_ref = done("train", train(config, root, progress)).ref
    evaluation = done("evaluate", evaluate(
        model_ref, "test", root, device=config.device, against=against,
        min_accuracy=gates.min_accuracy, max_regression=gates.max_regression, trust_code=trusted,
    ))
    if not evaluation.passed:
        result.failed = "evaluate"
        return result
    bundle = done("export", export(model_ref, export_options, root, trust_code=trusted))
    # the bundle this process just built: its native code (--aoti) is its own
    verdict = done("verify", verify(bundle.ref, root, verify_options, trust_code=trusted, trust=Trust(native=True)))
    if not verdict.passed:
        result.failed = "verify"
    return result
