"""The ``cnnpipe`` command line: parse, call a stage, render its result (table or ``--json``)."""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import math
import os
import sys
import traceback
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer's own click (>= 0.29)

from ..data.resize import FOLDER_SIZE, MAX_SIZE, MIN_SIZE
from ..errors import EXIT_GATE, EXIT_INTERNAL, EXIT_USAGE, CnnpipeError
from ..fs import STORAGE_ERRNOS, dumps
from ..options import DEVICES, SPLITS, ExportOptions, GateOptions, SignatureOptions, TrainConfig, VerifyOptions, parse_batch_sizes
from ..store.remote import is_url, open_root
from ..verification.signing import Trust
from ..verification.timelimit import DEFAULT_TIMEOUT, TIMEOUT_HELP, finish
from . import interrupt

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, evaluate, export and verify small CNN image classifiers as versioned release bundles.",
)
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
T = TypeVar("T")


class StoreName(str, Enum):
    models = "models"
    exports = "exports"
    data = "data"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).")]
ModelRef = Annotated[str, typer.Argument(help="Model version: NAME, NAME@latest, NAME@vN, or a path.")]
BundleRef = Annotated[str, typer.Argument(help="Export bundle: NAME, NAME@latest, NAME@vN, or a path.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-code", help="Rebuild a network defined by the user's code stored in the version (that .py file runs).",
)]
TrustNativeOpt = Annotated[bool, typer.Option(
    "--trust-native", help="Load a format holding native code (the AOTInductor package) from a bundle whose "
    "signature was not verified with --public-key: its machine code runs.",
)]
MirrorOpt = Annotated[
    str | None, typer.Option(help="Base URL or folder to fetch from instead of the official URLs (also CNNPIPE_MIRROR).")
]


def _choice_type(choices: tuple[str, ...]) -> type[Enum]:
    return Enum("Choice", {c: c for c in choices}, type=str)  # type: ignore[return-value]


def _option_params(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter with its typer.Option per ``option(...)`` field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        cli = f.metadata.get("cli")
        if cli is None:
            continue
        annotation: Any = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else list(f.default_factory())  # type: ignore[misc]
        if cli.choices:
            choice = _choice_type(cli.choices)
            annotation = list[choice] if cli.multiple else (choice | None if default is None else choice)
        info = typer.Option(*cli.flags, help=cli.help, show_default=default is not None)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[annotation, info]))
    return params


def _plain_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return tuple(_plain_value(v) for v in value)
    return value


def options_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Expand every parameter annotated with an options dataclass into that dataclass's options,
    add ``--root`` and ``--config FILE``, and hand the function the dataclass instances back."""
    sig = inspect.signature(fn, eval_str=True)
    groups = {name: p.annotation for name, p in sig.parameters.items() if dataclasses.is_dataclass(p.annotation)}
    params: list[inspect.Parameter] = []
    for name, p in sig.parameters.items():
        if name in groups:
            params += _option_params(groups[name])
        elif params and params[-1].kind == inspect.Parameter.KEYWORD_ONLY:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        else:
            params.append(p)
    params += [
        inspect.Parameter("root", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=RootOpt),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt),
    ]

    flags = {f.name: (f.metadata["cli"].flags or ("--" + f.name.replace("_", "-"),))[0]
             for cls in groups.values() for f in dataclasses.fields(cls) if "cli" in f.metadata}

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        kwargs.pop("root"), kwargs.pop("config")  # applied by their callbacks
        for name, value in kwargs.items():  # no option means anything by NaN or Infinity
            if isinstance(value, float) and not math.isfinite(value):
                _fail(CnnpipeError(f"{flags.get(name, '--' + name.replace('_', '-'))} must be a finite number, not {value}"))
        for name, cls in groups.items():
            keys = [f.name for f in dataclasses.fields(cls) if "cli" in f.metadata]
            kwargs[name] = cls(**{k: _plain_value(kwargs.pop(k)) for k in keys})
        fn(**kwargs)

    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def config_defaults(path: Path, params: list[Any]) -> dict[str, Any]:
    """Read a TOML file of a command's options (``epochs = 8``, ``min-accuracy = 0.97``, ...) as
    Click defaults; an unknown key or unreadable file is a usage error naming it."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise typer.BadParameter(f"{path}: not a readable TOML file ({e})") from None
    by_flag = {opt.lstrip("-").replace("-", "_"): p.name for p in params for opt in p.opts if opt.startswith("--")}
    for own in ("config", "root"):
        by_flag.pop(own, None)
    unknown = sorted(k for k in data if k.replace("-", "_") not in by_flag)
    if unknown:
        raise typer.BadParameter(f"{path}: unknown option {unknown[0]!r}; use this command's long option names (see --help)")
    # a table of values by format ([min-agreement]) is the option's FORMAT=VALUE form
    return {by_flag[k.replace("-", "_")]: ",".join(f"{n}={x}" for n, x in v.items()) if isinstance(v, dict) else v
            for k, v in data.items()}


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = (ctx.default_map or {}) | config_defaults(value, ctx.command.params)
    return value


def _root_path(value: str) -> Path | str:
    if not value.strip():
        raise typer.BadParameter("must name a folder (the one that holds data/, models/ and exports/)")
    return value.rstrip("/") if is_url(value) else Path(value)


def _set_root(ctx: typer.Context, value: str | None) -> str | None:
    if value is not None:  # given after the command: it wins over the one before it
        ctx.obj["root"] = _root_path(value)
    return value


def _root(ctx: typer.Context) -> Path:
    """The root folder: the one given, or the local mirror of an object-storage root (checked here)."""
    root = ctx.obj["root"]
    return open_root(root) if isinstance(root, str) else root


SIZE_HELP = (f"Resize images to SIZE x SIZE ({MIN_SIZE} to {MAX_SIZE}) on import, for networks made for larger "
             f"inputs (default: the dataset's own size; {FOLDER_SIZE} for imagefolder).")
ROOT_HELP = ("Folder holding the data/, models/ and exports/ stores, or object storage: s3://bucket/prefix "
             "(also CNNPIPE_ROOT).")
RootOpt = Annotated[str | None, typer.Option("--root", help=ROOT_HELP, callback=_set_root, show_default=False)]
TimeoutOpt = Annotated[float, typer.Option(help=TIMEOUT_HELP)]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="TOML file of this command's options (long names, e.g. epochs = 8); the command line wins.",
    is_eager=True, callback=_load_config, show_default=False,
)]


def _plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _fail(e: CnnpipeError) -> NoReturn:
    """Print a user-fixable problem as one line on stderr and exit with its code."""
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code) from None


def _call(fn: Callable[[], T]) -> T:
    """Run a stage; a user-fixable problem becomes one line on stderr and its exit code."""
    try:
        return fn()
    except CnnpipeError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]; nothing partial was kept")
        raise typer.Exit(130) from None
    except Exception as e:  # a bug, or a store that cannot be written: one line either way
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
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
            f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))} "
            "(set CNNPIPE_DEBUG=1 for the traceback; please report it)",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL) from None


def _emit(as_json: bool, result: Any, render: Callable[[Any], None]) -> None:
    if as_json:
        print(dumps(_plain(result), indent=2, default=str))
    else:
        render(result)


@app.callback()
def _main(
    ctx: typer.Context,
    root: Annotated[str, typer.Option(envvar="CNNPIPE_ROOT", help=ROOT_HELP)] = ".",
) -> None:
    ctx.obj = {"root": _root_path(root)}


@app.command()
@options_command
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
    size: Annotated[int | None, typer.Option(help=SIZE_HELP)] = None,
    channels: Annotated[int, typer.Option(help="With imagefolder: 1 (grayscale) or 3 (RGB).")] = 3,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="With imagefolder: "
        "validation share when the folder has no val/.")] = 0.1,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="With imagefolder: test "
        "share when the folder has no train/ and test/.")] = 0.2,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="With imagefolder: leave unreadable "
        "images out (listed) instead of failing.")] = False,
    flip: Annotated[bool, typer.Option(help="With imagefolder: horizontal flips are valid augmentation.")] = True,
    follow_symlinks: Annotated[bool, typer.Option("--follow-symlinks", help="With imagefolder: read images that "
        "symbolic links lead to outside PATH (refused by default).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a dataset (checksums checked) or import a folder of images into the data store."""
    from ..stages.download import download as run_download
    from ..stages.download import import_folder
    from .render import ByteProgress, render_download

    def run_stage() -> Any:
        if name == "imagefolder":
            if path is None or as_name is None:
                raise CnnpipeError("usage: cnnpipe download imagefolder PATH --name NAME")
            return import_folder(
                path, as_name, _root(ctx), size or FOLDER_SIZE, channels, val_fraction, test_fraction, seed,
                skip_bad, flip, plots, follow_symlinks,
            )
        if path is not None:
            raise CnnpipeError(f"unexpected PATH {str(path)!r}: only imagefolder takes one")
        with ByteProgress(err) as progress:
            return run_download(name, _root(ctx), mirror, val_size, seed, refresh, plots, progress.update, size=size)

    result = _call(run_stage)
    _emit(as_json, result, lambda r: render_download(out, r))


@app.command()
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
    from .render import TrainProgress, render_train

    if not 1 <= nproc <= (os.cpu_count() or 1):
        _fail(CnnpipeError(f"--nproc must be between 1 and {os.cpu_count() or 1} (this machine's CPU cores), not {nproc}"))
    if nproc > 1:
        raise typer.Exit(_launch_torchrun(nproc))
    show = int(os.environ.get("RANK", "0")) == 0
    with TrainProgress(err) as progress:
        result = _call(lambda: run_train(options, _root(ctx), progress if show else None, resume))
    if show:
        _emit(as_json, result, lambda r: render_train(out, r))


@app.command("import")
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

    result = _call(lambda: import_weights(weights, model, dataset, _root(ctx), name))
    _emit(as_json, result, lambda r: render_import(out, r))


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


@app.command()
@options_command
def evaluate(
    ctx: typer.Context,
    ref: ModelRef,
    gates: GateOptions,
    split: Annotated[_choice_type(SPLITS), typer.Option(help="Split to evaluate on.")] = "test",  # type: ignore[valid-type]
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inference batch size.")] = 256,
    device: Annotated[_choice_type(DEVICES), typer.Option(help="auto: CUDA when present, else CPU.")] = "auto",  # type: ignore[valid-type]
    trust_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Metrics, per-class table, plots and model card of a model version; optional gates exit 1."""
    from ..stages.evaluate import evaluate as run_evaluate
    from .render import render_evaluate

    result = _call(lambda: run_evaluate(
        ref, _plain_value(split), _root(ctx), batch_size, _plain_value(device), gates.against, gates.min_accuracy,
        gates.max_regression, trust_code=trust_code,
    ))
    _emit(as_json, result, lambda r: render_evaluate(out, r))
    _gate_exit(result)


def _gate_exit(result: Any) -> None:
    """Exit 1 naming each failed evaluation gate."""
    failed = [g for g in result.gates if not g.passed]
    for g in failed:
        err.print(f"[bold red]gate failed:[/] {g.gate}: {g.detail}", highlight=False)
    if failed:
        raise typer.Exit(EXIT_GATE)


def _export(ref: str, options: ExportOptions, root: Path, trust_code: bool) -> Any:
    from ..stages.export import export as run_export

    return run_export(ref, options, root, trust_code=trust_code)


def _verify(ref: str, options: VerifyOptions, root: Path, trust_code: bool, trust: Trust) -> Any:
    from ..stages.verify import verify as run_verify

    return run_verify(ref, root, options, trust_code=trust_code, trust=trust)


@app.command()
@options_command
def export(
    ctx: typer.Context, ref: ModelRef, options: ExportOptions, trust_code: TrustOpt = False, as_json: JsonOpt = False
) -> None:
    """Export a model version to ONNX, pt2, TorchScript and safetensors, with metadata."""
    from .render import render_export

    result = _call(lambda: _export(ref, options, _root(ctx), trust_code))
    _emit(as_json, result, lambda r: render_export(out, r))


@app.command()
@options_command
def verify(
    ctx: typer.Context, ref: BundleRef, options: VerifyOptions, signature: SignatureOptions,
    trust_native: TrustNativeOpt = False, trust_code: TrustOpt = False, as_json: JsonOpt = False,
) -> None:
    """Reload each export in its own runtime and compare with PyTorch; exit 1 on any breach."""
    from .render import render_verify

    result = _call(lambda: _verify(ref, options, _root(ctx), trust_code, signature.trust(trust_native)))
    _emit(as_json, result, lambda r: render_verify(out, r))
    if not result.passed:
        err.print(f"[bold red]verify failed:[/] {result.bundle} (report: {result.report_path})", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_GATE)


@app.command()
@options_command
def run(
    ctx: typer.Context,
    train_options: TrainConfig,
    export_options: ExportOptions,
    verify_options: VerifyOptions,
    gates: GateOptions,
    mirror: MirrorOpt = None,
    size: Annotated[int | None, typer.Option(help="Standard datasets: " + SIZE_HELP)] = None,
    skip_train: Annotated[bool, typer.Option("--skip-train", help="Release the newest version of the model --name "
        "(default from --model) as it is, e.g. weights brought in with `cnnpipe import`: evaluate, export, verify.")] = False,
    trust_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """download → train → evaluate → export → verify; stops at the first failure with its exit code."""
    from ..stages.run import run as run_pipeline
    from . import render as report

    renderers = {
        "download": report.render_download, "train": report.render_train, "evaluate": report.render_evaluate,
        "export": report.render_export, "verify": report.render_verify,
    }
    with report.TrainProgress(err) as progress:
        def on_stage(stage: str, result: Any) -> None:
            if stage == "train":
                progress.stop()
            if not as_json:
                renderers[stage](out, result)

        result = _call(lambda: run_pipeline(
            train_options, export_options, verify_options, gates,
            root=_root(ctx), mirror=mirror, size=size, skip_train=skip_train, trust_code=trust_code,
            progress=progress, on_stage=on_stage,
        ))
    if as_json:
        print(dumps({k: _plain(v) for k, v in dataclasses.asdict(result).items() if v is not None and k != "failed"},
                         indent=2, default=str))
    if result.failed == "evaluate":
        _gate_exit(result.evaluate)
    if result.failed == "verify":
        err.print(f"[bold red]verify failed:[/] {result.verify.bundle}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_GATE)


@app.command()
@options_command
def predict(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.", show_default=False)],
    bundle: Annotated[str, typer.Option("--bundle", "-b", help="Export bundle: NAME, NAME@vN or a path.")],
    signature: SignatureOptions,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per image.")] = 3,
    provider: Annotated[str, typer.Option(help="onnxruntime provider: cpu or cuda.")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images decoded and run per batch.")] = 256,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
) -> None:
    """Classify image files with a bundle's ONNX model in onnxruntime (torch is not imported)."""
    from ..stages.predict import predict as run_predict
    from .render import render_predict

    result = _call(lambda: run_predict(images, bundle, _root(ctx), top_k, provider, batch_size, timeout,
                                       signature.trust()))
    _emit(as_json, result, lambda r: render_predict(out, r))


@app.command()
@options_command
def bench(
    ctx: typer.Context,
    ref: BundleRef,
    signature: SignatureOptions,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,256",
    seconds: Annotated[float, typer.Option(help="Time spent per runtime and batch size.")] = 2.0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every runtime (default: torch's).")] = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    trust_native: TrustNativeOpt = False,
    trust_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Latency (p50, p99) and throughput of each runtime of a bundle at each batch size; exit 1 when
    a format cannot be loaded or run (a failed row, the others still timed)."""
    from ..stages.bench import bench as run_bench
    from .render import render_bench

    result = _call(lambda: run_bench(ref, _root(ctx), parse_batch_sizes(batch_sizes), seconds, threads,
                                     trust_code=trust_code, timeout=timeout, trust=signature.trust(trust_native)))
    _emit(as_json, result, lambda r: render_bench(out, r))
    if not result.passed:
        err.print(f"[bold red]bench:[/] {len(result.failed)} runtime(s) failed: {escape(', '.join(result.failed))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_GATE)


@app.command()
def keygen(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the two key files.")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Make an ECDSA P-256 key pair for signing bundles (cnnpipe-signing.key, private; .pub, public)."""
    from ..verification.signing import keygen as make_keys

    result = _call(lambda: make_keys(out_dir))
    _emit(as_json, result, lambda r: out.print(f"private key: {escape(r.private_key)} (keep it secret)\n"
                                               f"public key:  {escape(r.public_key)}", highlight=False))


@app.command()
@options_command
def publish(
    ctx: typer.Context,
    ref: BundleRef,
    mlflow: Annotated[str, typer.Option("--mlflow", envvar="MLFLOW_TRACKING_URI", show_default=False,
        help="MLflow tracking server (http://host:5000, or a database URI) whose registry receives it.")],
    alias: Annotated[str | None, typer.Option(help="Point this alias (e.g. champion) at the version once it is "
        "complete.", show_default=False)] = None,
    registered_model: Annotated[str | None, typer.Option(help="Registered model name (default: the bundle's "
        "name).", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a verified export bundle as a version of an MLflow registered model (idempotent)."""
    from ..stages.publish import publish as run_publish
    from ..store.version import check_name

    def publish_bundle() -> Any:
        if not mlflow.strip():
            raise CnnpipeError("--mlflow must name a tracking server, e.g. http://127.0.0.1:5000")
        for flag, value in (("--alias", alias), ("--registered-model", registered_model)):
            if value is not None:
                check_name(value, flag)
        return run_publish(ref, mlflow, _root(ctx), alias, registered_model)

    result = _call(publish_bundle)
    _emit(as_json, result, lambda r: out.print(
        f"{escape(r.bundle)}: {escape(r.registered_model)} version {r.version} "
        f"({'registered' if r.created else 'already registered'}){f', alias {escape(r.alias)}' if r.alias else ''}; "
        f"load it with mlflow.pyfunc.load_model({r.model_uri!r})", highlight=False))


@app.command()
@options_command
def sign(
    ctx: typer.Context,
    ref: BundleRef,
    key: Annotated[Path, typer.Option("--key", help="Private key (PEM) to sign with (see cnnpipe keygen).")],
    as_json: JsonOpt = False,
) -> None:
    """Sign every file of an export bundle (model-signing, key-pair mode): adds bundle.sig, changes no file."""
    from ..store.workspace import Workspace
    from ..verification.signing import sign as sign_bundle

    result = _call(lambda: {"bundle": ref, "signature": str(sign_bundle(Workspace(_root(ctx)).exports.resolve(ref), key))})
    _emit(as_json, result, lambda r: out.print(f"signed {escape(r['bundle'])}: {escape(r['signature'])}", highlight=False))


@app.command()
@options_command
def models(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Count parameters for this "
        "dataset's input (a standard name needs no download).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Show this architecture only: NAME, "
        "torchvision:NAME, timm:NAME, FILE.py:FACTORY or module:FACTORY (built, and checked on the input).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List every registered network (or one --model) with its parameter count for a dataset's input shape."""
    from ..stages.models import list_models
    from .render import render_models

    result = _call(lambda: list_models(dataset, _root(ctx), model))
    _emit(as_json, result, lambda r: render_models(out, r))


MAX_AGE_HOURS = 24 * 366 * 10


@app.command("gc")
@options_command
def collect_garbage(
    ctx: typer.Context,
    older_than: Annotated[float, typer.Option(
        "--older-than", help=f"Hours an abandoned upload must be old before it is removed (0 to {MAX_AGE_HOURS}): "
        "a live writer's upload is younger than that.")] = 24.0,
    as_json: JsonOpt = False,
) -> None:
    """Remove what killed writers left: drafts no live process owns (a local root), or versions claimed
    but never completed and unfinished uploads (object storage)."""
    from datetime import timedelta

    from ..store.workspace import Workspace

    def collect() -> dict[str, Any]:
        if not 0 <= older_than <= MAX_AGE_HOURS:
            raise CnnpipeError(f"--older-than must be a number of hours from 0 to {MAX_AGE_HOURS}, not {older_than}")
        return {"removed": Workspace(_root(ctx)).collect_garbage(timedelta(hours=older_than))}

    result = _call(collect)
    _emit(as_json, result, lambda r: out.print("\n".join(r["removed"]) or "nothing to remove", highlight=False))


@app.command("ls")
@options_command
def list_stores(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List what the data, models and exports stores hold."""
    from ..store.workspace import Workspace
    from .render import render_ls

    def listing() -> dict[str, Any]:
        ws = Workspace(_root(ctx))
        if not ws.root.is_dir():  # a typo would otherwise list empty stores
            raise CnnpipeError(f"--root {ws.root}: no such folder; give the folder that holds data/, models/ and exports/")
        return {
            store.root.name: {
                name: [{"version": n, "created": v.manifest.get("created"), **v.results} if not isinstance(v, str)
                       else {"version": n, "damaged": v} for n, v in store.listing(name)]
                for name in store.names()
            }
            for store in (ws.data, ws.models, ws.exports)
        }

    result = _call(listing)
    _emit(as_json, result, lambda r: render_ls(out, r))


@app.command()
@options_command
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME@vN, NAME@latest or a path.")],
    store: Annotated[StoreName, typer.Option(help="Which store NAME refers to.")] = StoreName.models,
    as_json: JsonOpt = False,
) -> None:
    """Show one version's manifest: files, lineage, environment and results."""
    from ..store.workspace import Workspace
    from .render import render_show

    version = _call(lambda: getattr(Workspace(_root(ctx)), store.value).resolve(ref))
    _emit(as_json, version.manifest, lambda m: render_show(out, version.path, m))


def main() -> NoReturn:
    """Console-script entry point: click's usage errors are one line too; a format's work left
    running past ``--timeout`` cannot be joined, so the process then ends without it."""
    interrupt.install()
    try:
        code = app(prog_name="cnnpipe", standalone_mode=False)
    except NoArgsIsHelpError as e:
        out.print(e.format_message(), highlight=False, markup=False)
        code = EXIT_USAGE
    except ClickException as e:
        hint = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) else ""
        err.print(f"[bold red]error:[/] {escape(' '.join(e.format_message().split()) + hint)}",
                  highlight=False, soft_wrap=True)
        code = e.exit_code
    except typer.Abort:
        err.print("[bold red]interrupted[/]")
        code = 130
    code = code if isinstance(code, int) else 0
    finish(code)
    sys.exit(code)
