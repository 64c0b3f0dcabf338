"""The whole release pipeline as one library call: download, train, evaluate with gates, export, verify."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.catalog import CATALOG
from ..engine import Progress
from ..options import ExportOptions, GateOptions, VerifyOptions
from ..store import Workspace
from .download import download
from .evaluate import check_gate_options, evaluate
from .export import export
from .train import TrainConfig, train
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
    progress: Progress | None = None,
    on_stage: Stage | None = None,
) -> RunResult:
    """Run every stage as a CI release job would, stopping at the first failed gate.

    A standard dataset is fetched (or an intact version reused); an imported folder is used
    as it is. ``gates.against`` is pinned before training, so ``NAME`` means the version that
    was latest when the run started. ``on_stage(name, result)`` is called after each stage.
    A network from the user's file is trusted for the stages after training: this call
    already ran that file to train it, and the copy it rebuilds from is checked by sha256.
    Bad input raises ``CnnpipeError`` before anything is written.
    """
    export_options = export_options or ExportOptions()
    verify_options = verify_options or VerifyOptions()
    gates = gates or GateOptions()
    config.resolved()
    check_gate_options(gates.min_accuracy, gates.against, gates.max_regression)
    verify_options.batch_size_list(), verify_options.provider_list()  # usage errors before any work
    against = Workspace(root).models.resolve(gates.against).ref if gates.against else None
    result = RunResult()

    def done(stage: str, value: Any) -> Any:
        setattr(result, stage, value)
        if on_stage is not None:
            on_stage(stage, value)
        return value

    if config.dataset in CATALOG:
        done("download", download(config.dataset, root, mirror))
    model = done("train", train(config, root, progress))
    evaluation = done("evaluate", evaluate(
        model.ref, "test", root, device=config.device, against=against,
        min_accuracy=gates.min_accuracy, max_regression=gates.max_regression, trust_code=True,
    ))
    if not evaluation.passed:
        result.failed = "evaluate"
        return result
    bundle = done("export", export(model.ref, export_options, root, trust_code=True))
    verdict = done("verify", verify(bundle.ref, root, verify_options, trust_code=True))
    if not verdict.passed:
        result.failed = "verify"
    return result
