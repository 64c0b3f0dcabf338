"""The release stages' commands: download, train, import, evaluate, export, verify, run."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import CnnpipeError
from ..fs import dumps
from ..options.commands import DownloadOptions, EvaluateOptions, RunOptions
from ..options.release import ExportOptions, GateOptions, SignatureOptions, VerdictOptions, VerifyOptions
from ..options.training import TrainConfig
from .plumbing import (
    BundleRef,
    JsonOpt,
    ModelRef,
    ProgressOpt,
    TrustNativeOpt,
    TrustOpt,
    call,
    emit,
    err,
    gate_exit,
    gate_failed,
    options_command,
    out,
    plain,
    root_of,
    steps,
)


@options_command
def download(
    ctx: typer.Context,
    options: DownloadOptions,
    name: Annotated[str, typer.Argument(help="Dataset: mnist-sample (shipped), mnist, "
        "fashion-mnist, cifar10, or imagefolder.")] = "mnist-sample",
    path: Annotated[Path | None, typer.Argument(help="With imagefolder: the folder of class sub-folders.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a dataset (checksums checked) or import a folder of images into the data store."""
    from ..stages.download import download as run_download
    from ..stages.download import import_folder
    from .render import ByteProgress, render_download

    def run_stage() -> Any:
        if name == "imagefolder":
            if path is None:
                raise CnnpipeError("usage: cnnpipe download imagefolder PATH --name NAME")
            return import_folder(path, options, root_of(ctx))
        if path is not None:
            raise CnnpipeError(f"unexpected PATH {str(path)!r}: only imagefolder takes one")
        with ByteProgress(err) as progress:
            return run_download(name, options, root_of(ctx), progress.update)

    emit(as_json, call(run_stage), lambda r: render_download(out, r))


@options_command
def train(
    ctx: typer.Context,
    options: TrainConfig,
    resume: Annotated[str | None, typer.Option(
        help="Continue an interrupted run: a model NAME (its newest run) or a run folder; its own options are used."
    )] = None,
    nproc: Annotated[int, typer.Option(help="Train data-parallel on N processes (launches torchrun on 127.0.0.1).")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Train a network; the epoch with the best validation accuracy is kept."""
    from ..stages.train import train as run_train
    from ..training.launch import check_nproc, is_main_process, relaunch
    from .render import TrainProgress, render_train

    call(lambda: check_nproc(nproc))
    if nproc > 1:
        raise typer.Exit(relaunch(nproc, sys.argv[1:]))
    show = is_main_process()
    with TrainProgress(err) as progress:
        result = call(lambda: run_train(options, root_of(ctx), progress if show else None, resume))
    if show:
        emit(as_json, result, lambda r: render_train(out, r))


@options_command
def import_model(
    ctx: typer.Context,
    weights: Annotated[Path, typer.Argument(help="A .safetensors file or a PyTorch checkpoint (read weights-only).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Architecture: NAME, torchvision:NAME, timm:NAME, "
                                       "FILE.py:FACTORY or module:FACTORY.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset version the weights are for.")],
    name: Annotated[str | None, typer.Option(help="Name of the model in the store (default from --model).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a model version from weights trained elsewhere; every key and shape must match the network."""
    from ..stages.import_weights import import_weights
    from .render import render_import

    result = call(lambda: import_weights(weights, model, dataset, root_of(ctx), name))
    emit(as_json, result, lambda r: render_import(out, r))


@options_command
def evaluate(
    ctx: typer.Context, ref: ModelRef, options: EvaluateOptions, trust_code: TrustOpt = False, as_json: JsonOpt = False,
) -> None:
    """Metrics, per-class table, plots and model card of a model version; optional gates exit 1."""
    from ..stages.evaluate import evaluate as run_evaluate
    from .render import render_evaluate

    result = call(lambda: run_evaluate(ref, options, root_of(ctx), trust_code=trust_code))
    emit(as_json, result, lambda r: render_evaluate(out, r))
    gate_exit(result)


@options_command
def export(
    ctx: typer.Context, ref: ModelRef, options: ExportOptions, trust_code: TrustOpt = False, as_json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Export a model version to ONNX, pt2, TorchScript and safetensors, with metadata."""
    from ..stages.export import export as run_export
    from .render import render_export

    with steps(as_json, progress):
        result = call(lambda: run_export(ref, options, root_of(ctx), trust_code=trust_code))
    emit(as_json, result, lambda r: render_export(out, r))
    if not result.passed:
        gate_failed("export refused", "; ".join(result.refused.values()))


@options_command
def verify(
    ctx: typer.Context, ref: BundleRef, options: VerifyOptions, signature: SignatureOptions, verdict: VerdictOptions,
    trust_native: TrustNativeOpt = False, trust_code: TrustOpt = False, as_json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Reload each export in its own runtime and compare with PyTorch; exit 1 on any breach."""
    from ..stages.verify import verify as run_verify
    from .render import render_verify

    key = Path(verdict.sign_key) if verdict.sign_key else None
    with steps(as_json, progress):
        result = call(lambda: run_verify(ref, options, root_of(ctx), trust_code=trust_code,
                                         trust=signature.trust(trust_native), sign_key=key))
    emit(as_json, result, lambda r: render_verify(out, r))
    if not result.passed:
        gate_failed("verify failed", f"{result.bundle} (report: {result.report_path})")


@options_command
def run(
    ctx: typer.Context, train_options: TrainConfig, export_options: ExportOptions, verify_options: VerifyOptions,
    gates: GateOptions, options: RunOptions, trust_code: TrustOpt = False, as_json: JsonOpt = False,
    progress_lines: ProgressOpt = None,
) -> None:
    """download → train → evaluate → export → verify; stops at the first failure with its exit code."""
    from ..stages.run import run as run_pipeline
    from . import render

    renderers = {
        "download": render.render_download, "train": render.render_train, "evaluate": render.render_evaluate,
        "export": render.render_export, "verify": render.render_verify,
    }
    options = dataclasses.replace(options, train=train_options, export=export_options, verify=verify_options, gates=gates)
    with render.TrainProgress(err) as progress, steps(as_json, progress_lines):
        def on_stage(stage: str, result: Any) -> None:
            if stage == "train":
                progress.stop()
            if not as_json:
                renderers[stage](out, result)

        result = call(lambda: run_pipeline(options, root_of(ctx), trust_code=trust_code, progress=progress,
                                           on_stage=on_stage))
    if as_json:
        print(dumps({k: plain(v) for k, v in dataclasses.asdict(result).items() if v is not None and k != "failed"},
                    indent=2, default=str))
    if result.failed == "evaluate":
        gate_exit(result.evaluate)
    if result.failed == "export":
        gate_failed("export refused", "; ".join(result.export.refused.values()))
    if result.failed == "verify":
        gate_failed("verify failed", result.verify.bundle)
