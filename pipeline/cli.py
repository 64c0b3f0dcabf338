"""The ``cnnpipe`` command line: parse, call a stage, render its result (table or ``--json``)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from .errors import EXIT_GATE, EXIT_INTERNAL, EXIT_USAGE, CnnpipeError
from .formats import BASE_FORMATS, FORMATS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, evaluate, export and verify small CNN image classifiers as versioned release bundles.",
)
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
T = TypeVar("T")
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Compile(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class Loader(str, Enum):
    auto = "auto"
    device = "device"
    stream = "stream"


class Split(str, Enum):
    test = "test"
    val = "val"


Format = Enum("Format", {name: name for name in (*BASE_FORMATS, "all")}, type=str)  # from the format table


class Layout(str, Enum):
    flat = "flat"
    triton = "triton"


class StoreName(str, Enum):
    models = "models"
    exports = "exports"
    data = "data"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).")]
ModelRef = Annotated[str, typer.Argument(help="Model version: NAME, NAME@latest, NAME@vN, or a path.")]
BundleRef = Annotated[str, typer.Argument(help="Export bundle: NAME, NAME@latest, NAME@vN, or a path.")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Dataset version to train on (NAME, NAME@vN or a path).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Architecture to train (see the registry).")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Name of the model in the store (default: the architecture).")]
EpochsOpt = Annotated[int, typer.Option(help="Training epochs.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Training batch size (default: the network's recipe).")]
OptimizerOpt = Annotated[str | None, typer.Option(help="adam, adamw or sgd (default: the network's recipe).")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default: the recipe's).")]
MomentumOpt = Annotated[float, typer.Option(help="SGD momentum.")]
NesterovOpt = Annotated[bool, typer.Option(help="SGD with Nesterov momentum.")]
WeightDecayOpt = Annotated[float | None, typer.Option("--weight-decay", help="Weight decay (default: the recipe's).")]
ScheduleOpt = Annotated[str | None, typer.Option(help="none, step, cosine or onecycle (default: the recipe's).")]
WarmupOpt = Annotated[float, typer.Option("--warmup-epochs", help="Linear learning-rate warm-up, in epochs.")]
StepSizeOpt = Annotated[int | None, typer.Option("--step-size", help="step schedule: epochs between decays (default epochs/3).")]
GammaOpt = Annotated[float, typer.Option(help="step schedule: decay factor.")]
SmoothingOpt = Annotated[float, typer.Option("--label-smoothing", help="Label smoothing of the cross-entropy.")]
ClipOpt = Annotated[float | None, typer.Option("--grad-clip", help="Clip the gradient norm to this value.")]
PatienceOpt = Annotated[int | None, typer.Option(help="Stop after this many epochs without a better validation accuracy.")]
CompileModeOpt = Annotated[str, typer.Option("--compile-mode", help="torch.compile mode: default, "
    "reduce-overhead (CUDA graphs) or max-autotune.")]
PrecisionOpt = Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA), fp32 or bf16.")]
DeterministicOpt = Annotated[bool, typer.Option(help="torch.use_deterministic_algorithms(True).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for weights init and shuffling.")]
DeviceOpt = Annotated[Device, typer.Option(help="auto: CUDA when present, else CPU.")]
CompileOpt = Annotated[Compile, typer.Option("--compile", help="torch.compile: auto compiles on CUDA only.")]
AugmentOpt = Annotated[bool, typer.Option(help="Use the dataset's augmentation (random crop, flips where valid).")]
LoaderOpt = Annotated[Loader, typer.Option(help="device: the split on the device; stream: "
    "memory-mapped through a DataLoader; auto: device when it fits.")]
WorkersOpt = Annotated[int, typer.Option(help="DataLoader workers when streaming.")]
MirrorOpt = Annotated[
    str | None, typer.Option(help="Base URL or folder to fetch from instead of the official URLs (also CNNPIPE_MIRROR).")
]
FormatOpt = Annotated[list[Format], typer.Option(  # type: ignore[valid-type]
    "--format", "-f",
    help="Export format (repeatable): " + ", ".join(
        f"{name} (legacy)" if FORMATS[name].legacy else name for name in BASE_FORMATS
    ) + ", or all.",
)]
OpsetOpt = Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")]
Fp16Opt = Annotated[bool, typer.Option("--fp16", help="Also write model.fp16.onnx (fp16 weights, float32 inputs and outputs).")]
Int8Opt = Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx (static "
    "quantization calibrated on training images).")]
AotiOpt = Annotated[bool, typer.Option("--aoti", help="Also compile the pt2 program into "
    "model.aoti.pt2 (AOTInductor; needs a C++ compiler).")]
LayoutOpt = Annotated[Layout, typer.Option(help="triton: also write a Triton model repository under triton/.")]
CalibrationOpt = Annotated[int, typer.Option("--calibration-images", help="Training images that calibrate --int8.")]
BatchSizesOpt = Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes to verify at.")]
SamplesOpt = Annotated[int, typer.Option(help="Number of real test images to verify on.")]
FullOpt = Annotated[bool, typer.Option("--full", help="Verify on the whole test split instead of --samples images.")]
AtolOpt = Annotated[
    float | None, typer.Option(help="Absolute logit tolerance for every format (default per format and provider: see README).")
]
RtolOpt = Annotated[
    float | None, typer.Option(help="Relative logit tolerance (times |reference logit|) for every format.")
]
AgreementOpt = Annotated[
    float | None, typer.Option("--min-agreement", help="Minimum top-1 agreement with PyTorch (0-1) for every format.")
]
ProvidersOpt = Annotated[str, typer.Option(
    help="devices to verify on: cpu, cuda or cpu,cuda (onnxruntime's provider, and the network rebuilt from safetensors)."
)]
MinAccuracyOpt = Annotated[
    float | None, typer.Option("--min-accuracy", help="Gate: exit 1 when test accuracy is below this fraction.")
]
AgainstOpt = Annotated[
    str | None, typer.Option(help="Model version to compare with on the same images (per-class differences).")
]
MaxRegressionOpt = Annotated[
    float | None,
    typer.Option("--max-regression", help="Gate with --against: exit 1 when accuracy drops by more "
        "than this many points, overall or for any class."),
]


def config_defaults(path: Path, params: list[Any]) -> dict[str, Any]:
    """Read a TOML file of ``run`` options (``epochs = 8``, ``min-accuracy = 0.97``, ...) as
    Click defaults; an unknown key or unreadable file is a usage error naming it."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise typer.BadParameter(f"{path}: not a readable TOML file ({e})") from None
    by_flag = {opt.lstrip("-").replace("-", "_"): p.name for p in params for opt in p.opts if opt.startswith("--")}
    by_flag.pop("config", None)
    unknown = sorted(k for k in data if k.replace("-", "_") not in by_flag)
    if unknown:
        raise typer.BadParameter(f"{path}: unknown option {unknown[0]!r}; use the long names of `cnnpipe run --help`")
    return {by_flag[k.replace("-", "_")]: v for k, v in data.items()}


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = (ctx.default_map or {}) | config_defaults(value, ctx.command.params)
    return value


def _root(ctx: typer.Context) -> Path:
    return ctx.obj["root"]


def _plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _call(fn: Callable[[], T]) -> T:
    """Run a stage; a user-fixable problem becomes one line on stderr and its exit code."""
    try:
        return fn()
    except CnnpipeError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]; nothing partial was kept")
        raise typer.Exit(130) from None
    except Exception as e:  # a bug, or a store that cannot be written: one line either way
        if isinstance(e, OSError) and e.errno in STORAGE_ERRORS:
            err.print(
                f"[bold red]error:[/] {'cannot access' if e.errno == errno.EACCES else 'cannot write'}: "
                f"{e.strerror} ({e.filename or 'the store'}); "
                "nothing partial was kept: free space or fix permissions, then run again",
                highlight=False, soft_wrap=True,
            )
            raise typer.Exit(EXIT_USAGE) from None
        if os.environ.get("CNNPIPE_DEBUG"):
            traceback.print_exc()
        err.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {e} "
            "(set CNNPIPE_DEBUG=1 for the traceback; please report it)",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL) from None


def _emit(as_json: bool, result: Any, render: Callable[[Any], None]) -> None:
    if as_json:
        print(json.dumps(_plain(result), indent=2, default=str))
    else:
        render(result)


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise CnnpipeError(f"--batch-sizes must be comma-separated integers, not {text!r}") from None
    return sizes


def _providers(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@app.callback()
def _main(
    ctx: typer.Context,
    root: Annotated[
        Path, typer.Option(envvar="CNNPIPE_ROOT", help="Folder holding the data/, models/ and exports/ stores.")
    ] = Path("."),
) -> None:
    ctx.obj = {"root": root}


@app.command()
def download(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Dataset: mnist-sample (shipped), mnist, "
        "fashion-mnist, cifar10, or imagefolder.")] = "mnist-sample",
    path: Annotated[Path | None, typer.Argument(help="With imagefolder: the folder of class sub-folders.")] = None,
    mirror: MirrorOpt = None,
    val_size: Annotated[int | None, typer.Option("--val-size", help="Validation images held out of "
        "train (standard datasets; default 5000).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the validation (and image folder) split.")] = 0,
    refresh: Annotated[bool, typer.Option(help="Fetch again even if an intact version exists.")] = False,
    plots: Annotated[bool, typer.Option(help="Write samples.png and classes.png into the version.")] = True,
    as_name: Annotated[str | None, typer.Option("--name", help="With imagefolder: the dataset's name.")] = None,
    size: Annotated[int, typer.Option(help="With imagefolder: images are resized to SIZE x SIZE.")] = 32,
    channels: Annotated[int, typer.Option(help="With imagefolder: 1 (grayscale) or 3 (RGB).")] = 3,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="With imagefolder: "
        "validation share when the folder has no val/.")] = 0.1,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="With imagefolder: test "
        "share when the folder has no train/ and test/.")] = 0.2,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="With imagefolder: leave unreadable "
        "images out (listed) instead of failing.")] = False,
    flip: Annotated[bool, typer.Option(help="With imagefolder: horizontal flips are valid augmentation.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a dataset (checksums checked) or import a folder of images into the data store."""
    from .report import ByteProgress, render_download
    from .stages.download import download as run_download
    from .stages.download import import_folder

    def run_stage() -> Any:
        if name == "imagefolder":
            if path is None or as_name is None:
                raise CnnpipeError("usage: cnnpipe download imagefolder PATH --name NAME")
            return import_folder(
                path, as_name, _root(ctx), size, channels, val_fraction, test_fraction, seed, skip_bad, flip, plots
            )
        if path is not None:
            raise CnnpipeError(f"unexpected PATH {str(path)!r}: only imagefolder takes one")
        with ByteProgress(err) as progress:
            return run_download(name, _root(ctx), mirror, val_size, seed, refresh, plots, progress.update)

    result = _call(run_stage)
    _emit(as_json, result, lambda r: render_download(out, r))


@app.command()
def train(
    ctx: typer.Context,
    model: ModelOpt = "lenet5",
    dataset: DatasetOpt = "mnist-sample",
    name: NameOpt = None,
    epochs: EpochsOpt = 8,
    batch_size: BatchOpt = None,
    optimizer: OptimizerOpt = None,
    lr: LrOpt = None,
    momentum: MomentumOpt = 0.9,
    nesterov: NesterovOpt = False,
    weight_decay: WeightDecayOpt = None,
    schedule: ScheduleOpt = None,
    warmup_epochs: WarmupOpt = 0.0,
    step_size: StepSizeOpt = None,
    gamma: GammaOpt = 0.1,
    label_smoothing: SmoothingOpt = 0.0,
    grad_clip: ClipOpt = None,
    patience: PatienceOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    compile: CompileOpt = Compile.auto,
    compile_mode: CompileModeOpt = "default",
    precision: PrecisionOpt = "auto",
    deterministic: DeterministicOpt = False,
    augment: AugmentOpt = True,
    loader: LoaderOpt = Loader.auto,
    workers: WorkersOpt = 2,
    resume: Annotated[
        str | None, typer.Option(help="Continue an interrupted run: a model NAME (its newest run) "
            "or a run folder; its own options are used.")
    ] = None,
    nproc: Annotated[int, typer.Option(help="Train data-parallel on N processes (launches torchrun on 127.0.0.1).")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Train a network; the epoch with the best validation accuracy is kept."""
    from .report import render_train

    if nproc > 1:
        raise typer.Exit(_launch_torchrun(nproc))
    config = _train_config(locals())
    result = _train(ctx, config, resume)
    if int(os.environ.get("RANK", "0")) == 0:
        _emit(as_json, result, lambda r: render_train(out, r))


def _launch_torchrun(nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes; returns its exit code."""
    import socket
    import subprocess

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "cnnpipe", *argv,
    ]
    return subprocess.run(command).returncode


def _train_config(options: dict[str, Any]) -> Any:
    from .stages.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {"arch" if k == "model" else k: v.value if isinstance(v, Enum) else v for k, v in options.items()}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


def _train(ctx: typer.Context, config: Any, resume: str | None = None) -> Any:
    from .report import TrainProgress
    from .stages.train import train as run_train

    show = int(os.environ.get("RANK", "0")) == 0
    with TrainProgress(err) as progress:
        return _call(lambda: run_train(config, _root(ctx), progress if show else None, resume))


@app.command()
def evaluate(
    ctx: typer.Context,
    ref: ModelRef,
    split: Annotated[Split, typer.Option(help="Split to evaluate on.")] = Split.test,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inference batch size.")] = 256,
    device: DeviceOpt = Device.auto,
    against: AgainstOpt = None,
    max_regression: MaxRegressionOpt = None,
    min_accuracy: MinAccuracyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Metrics, per-class table, plots and model card of a model version; optional gates exit 1."""
    from .report import render_evaluate
    from .stages.evaluate import evaluate as run_evaluate

    result = _call(
        lambda: run_evaluate(
            ref, split.value, _root(ctx), batch_size, device.value, against, min_accuracy, max_regression
        )
    )
    _emit(as_json, result, lambda r: render_evaluate(out, r))
    _gate_exit(result)


def _gate_exit(result: Any) -> None:
    """Exit 1 naming each failed evaluation gate."""
    failed = [g for g in result.gates if not g["passed"]]
    for g in failed:
        err.print(f"[bold red]gate failed:[/] {g['gate']}: {g['detail']}", highlight=False)
    if failed:
        raise typer.Exit(EXIT_GATE)


@app.command()
def export(
    ctx: typer.Context,
    ref: ModelRef,
    fmt: FormatOpt = [Format.all],  # noqa: B006  (typer needs a literal default)
    opset: OpsetOpt = None,
    fp16: Fp16Opt = False,
    int8: Int8Opt = False,
    aoti: AotiOpt = False,
    layout: LayoutOpt = Layout.flat,
    calibration: CalibrationOpt = 256,
    as_json: JsonOpt = False,
) -> None:
    """Export a model version to ONNX, TorchScript, safetensors and pt2, with metadata."""
    from .report import render_export
    from .stages.export import export as run_export

    result = _call(
        lambda: run_export(ref, [f.value for f in fmt], _root(ctx), opset, fp16, int8, layout.value, calibration, aoti)
    )
    _emit(as_json, result, lambda r: render_export(out, r))


@app.command()
def verify(
    ctx: typer.Context,
    ref: BundleRef,
    batch_sizes: BatchSizesOpt = "1,2,7,64",
    samples: SamplesOpt = 512,
    full: FullOpt = False,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_agreement: AgreementOpt = None,
    providers: ProvidersOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Reload each export in its own runtime and compare with PyTorch; exit 1 on any breach."""
    from .report import render_verify
    from .stages.verify import verify as run_verify

    result = _call(
        lambda: run_verify(
            ref, _root(ctx), _batch_sizes(batch_sizes), None if full else samples, atol, min_agreement,
            _providers(providers), rtol,
        )
    )
    _emit(as_json, result, lambda r: render_verify(out, r))
    if not result.passed:
        err.print(f"[bold red]verify failed:[/] {result.bundle} (report: {result.report_path})", highlight=False)
        raise typer.Exit(EXIT_GATE)


@app.command()
def run(
    ctx: typer.Context,
    model: ModelOpt = "lenet5",
    dataset: DatasetOpt = "mnist-sample",
    name: NameOpt = None,
    epochs: EpochsOpt = 8,
    batch_size: BatchOpt = None,
    optimizer: OptimizerOpt = None,
    lr: LrOpt = None,
    momentum: MomentumOpt = 0.9,
    nesterov: NesterovOpt = False,
    weight_decay: WeightDecayOpt = None,
    schedule: ScheduleOpt = None,
    warmup_epochs: WarmupOpt = 0.0,
    step_size: StepSizeOpt = None,
    gamma: GammaOpt = 0.1,
    label_smoothing: SmoothingOpt = 0.0,
    grad_clip: ClipOpt = None,
    patience: PatienceOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    compile: CompileOpt = Compile.auto,
    compile_mode: CompileModeOpt = "default",
    precision: PrecisionOpt = "auto",
    deterministic: DeterministicOpt = False,
    augment: AugmentOpt = True,
    loader: LoaderOpt = Loader.auto,
    workers: WorkersOpt = 2,
    mirror: MirrorOpt = None,
    min_accuracy: MinAccuracyOpt = None,
    against: AgainstOpt = None,
    max_regression: MaxRegressionOpt = None,
    fmt: FormatOpt = [Format.all],  # noqa: B006
    opset: OpsetOpt = None,
    fp16: Fp16Opt = False,
    int8: Int8Opt = False,
    aoti: AotiOpt = False,
    layout: LayoutOpt = Layout.flat,
    samples: SamplesOpt = 512,
    full: FullOpt = False,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_agreement: AgreementOpt = None,
    providers: ProvidersOpt = "cpu",
    as_json: JsonOpt = False,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML file of these options (long names, e.g. epochs = 8); options on the command line win.",
                     is_eager=True, callback=_load_config),
    ] = None,
) -> None:
    """download → train → evaluate → export → verify; stops at the first failure with its exit code."""
    from . import report
    from .data.catalog import CATALOG
    from .stages.download import download as run_download
    from .stages.evaluate import check_gate_options
    from .stages.evaluate import evaluate as run_evaluate
    from .stages.export import export as run_export
    from .stages.verify import verify as run_verify
    from .store import Workspace

    root = _root(ctx)
    config = _train_config(locals())
    _call(config.resolved)
    _call(lambda: check_gate_options(min_accuracy, against, max_regression))
    if against is not None:  # pin it now: after training, NAME@latest is the new model itself
        against = _call(lambda: Workspace(root).models.resolve(against).ref)
    summary: dict[str, Any] = {}
    if dataset in CATALOG:  # a standard dataset: fetch (or reuse) it; an imported folder is already there
        summary["download"] = _call(lambda: run_download(dataset, root, mirror))
        if not as_json:
            report.render_download(out, summary["download"])
    summary["train"] = _train(ctx, config)
    if not as_json:
        report.render_train(out, summary["train"])
    ref = summary["train"].ref
    summary["evaluate"] = _call(
        lambda: run_evaluate(ref, "test", root, device=device.value, against=against,
                             min_accuracy=min_accuracy, max_regression=max_regression)
    )
    if not as_json:
        report.render_evaluate(out, summary["evaluate"])
    if not summary["evaluate"].passed:
        if as_json:
            print(json.dumps({k: _plain(v) for k, v in summary.items()}, indent=2, default=str))
        _gate_exit(summary["evaluate"])
    summary["export"] = _call(lambda: run_export(ref, [f.value for f in fmt], root, opset, fp16, int8, layout.value, aoti=aoti))
    if not as_json:
        report.render_export(out, summary["export"])
    bundle = summary["export"].ref
    summary["verify"] = _call(
        lambda: run_verify(bundle, root, (1, 2, 7, 64), None if full else samples, atol, min_agreement,
                           _providers(providers), rtol)
    )
    if as_json:
        print(json.dumps({k: _plain(v) for k, v in summary.items()}, indent=2, default=str))
    else:
        report.render_verify(out, summary["verify"])
    if not summary["verify"].passed:
        err.print(f"[bold red]verify failed:[/] {bundle}", highlight=False)
        raise typer.Exit(EXIT_GATE)


@app.command()
def predict(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.", show_default=False)],
    bundle: Annotated[str, typer.Option("--bundle", "-b", help="Export bundle: NAME, NAME@vN or a path.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per image.")] = 3,
    provider: Annotated[str, typer.Option(help="onnxruntime provider: cpu or cuda.")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images decoded and run per batch.")] = 256,
    as_json: JsonOpt = False,
) -> None:
    """Classify image files with a bundle's ONNX model in onnxruntime (torch is not imported)."""
    from .predict import predict as run_predict
    from .report import render_predict

    result = _call(lambda: run_predict(images, bundle, _root(ctx), top_k, provider, batch_size))
    _emit(as_json, result, lambda r: render_predict(out, r))


@app.command()
def bench(
    ctx: typer.Context,
    ref: BundleRef,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,256",
    seconds: Annotated[float, typer.Option(help="Time spent per runtime and batch size.")] = 2.0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every runtime (default: torch's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Latency (p50, p99) and throughput of each runtime of a bundle at each batch size."""
    from .report import render_bench
    from .stages.bench import bench as run_bench

    result = _call(lambda: run_bench(ref, _root(ctx), _batch_sizes(batch_sizes), seconds, threads))
    _emit(as_json, result, lambda r: render_bench(out, r))


@app.command()
def models(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Count parameters for this "
        "dataset's input (a standard name needs no download).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List every registered network with its parameter count for a dataset's input shape."""
    from .report import render_models
    from .stages.models import list_models

    result = _call(lambda: list_models(dataset, _root(ctx)))
    _emit(as_json, result, lambda r: render_models(out, r))


@app.command("ls")
def list_stores(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List what the data, models and exports stores hold."""
    from .report import render_ls
    from .store import Workspace

    ws = Workspace(_root(ctx))

    def listing() -> dict[str, Any]:
        return {
            store.root.name: {
                name: [{"version": v.number, "created": v.manifest["created"], **v.results} for v in store.versions(name)]
                for name in store.names()
            }
            for store in (ws.data, ws.models, ws.exports)
        }

    result = _call(listing)
    _emit(as_json, result, lambda r: render_ls(out, r))


@app.command()
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME@vN, NAME@latest or a path.")],
    store: Annotated[StoreName, typer.Option(help="Which store NAME refers to.")] = StoreName.models,
    as_json: JsonOpt = False,
) -> None:
    """Show one version's manifest: files, lineage, environment and results."""
    from .report import render_show
    from .store import Workspace

    ws = Workspace(_root(ctx))
    version = _call(lambda: getattr(ws, store.value).resolve(ref))
    _emit(as_json, version.manifest, lambda m: render_show(out, version.path, m))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="cnnpipe")
