"""The records every export format is made of, and the table they are registered in.

A runtime's module (``onnx``, ``torch``, ``openvino``, ...) defines its write and load
functions and calls ``register`` with one ``Format`` record per format or variant; a name
registered twice fails at import, as torchvision's ``register_model`` does. The package's
``__init__`` imports the runtime modules and exposes the table as ``FORMATS``.

Importing this module imports neither torch nor onnxruntime (``predict`` runs without torch).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..description import ModelDescription
from ..errors import CnnpipeError, ExportFailed, LoadFailed, MissingExtra, NativeCodeRefused, first_line
from ..fs import STORAGE_ERRNOS, writing

INPUT_NAME, OUTPUT_NAME = "input", "logits"
META_FILE = "cnnpipe.json"  # the metadata's name inside TorchScript, pt2 and AOTInductor files
META_KEY = "cnnpipe_meta"  # the metadata's name inside OpenVINO IR (rt_info) and ExecuTorch (a constant method)


@dataclass(frozen=True)
class Tolerance:
    """When a format passes: every logit within ``atol + rtol·|reference|`` (``atol`` None: no
    bound on logits), top-1 agreement at least ``min_agreement``, and accuracy at most
    ``max_accuracy_drop`` points below PyTorch's (None: not checked)."""

    atol: float | None
    rtol: float
    min_agreement: float
    max_accuracy_drop: float | None


@dataclass
class ExportContext:
    """What the write functions share while one bundle is exported."""

    model: Any  # the source network in eval mode, on the CPU
    example: Any  # a float32 batch of 2 (a batch of 1 would fix the batch axis)
    meta: dict[str, str]  # the str→str metadata every file embeds
    opset: int | None  # the ONNX opset asked for (None: the exporter's default)
    calibration: Callable[[int], np.ndarray]  # the first n normalized training images (int8)
    dataset: str  # the reference of the dataset the model was trained on
    split_batches: Callable[[str], Iterator[tuple[np.ndarray, np.ndarray]]]  # a split's (normalized images, labels)
    split_size: Callable[[str], int]  # the number of images of a split
    calibration_count: int = 256
    int8_limit: float = 1.0  # points of accuracy int8 may lose (formats.int8)
    gate_on: str = "bound"  # how that limit is judged (evaluation.bounds)
    recipes: dict[str, str] | None = None  # verify's re-export: each variant's recorded recipe, made again, not searched for
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # what a writer's search found, for model.json
    opset_used: int | None = None
    program: Any = None  # the torch.export program, made once by ``exported()``
    files: dict[str, Path] = field(default_factory=dict)  # the file each format saved so far, by format name

    def parent_file(self, name: str) -> Path:
        """The file format ``name`` saved in this export (a variant's or a converted format's source)."""
        if name not in self.files:
            raise CnnpipeError(f"the {name} file has not been written in this export; export it first")
        return self.files[name]

    def exported(self) -> Any:
        """The ``torch.export`` program with a dynamic batch axis, shared by every format made from it."""
        if self.program is None:
            import torch

            with quiet():
                self.program = torch.export.export(self.model, (self.example,), dynamic_shapes=batch_axis())
            for node in self.program.graph.nodes:  # the exporting process's call stack, with its install paths
                node.meta.pop("stack_trace", None)
        return self.program


@dataclass(frozen=True)
class LoadContext:
    """What a loader checks a file against: the bundle's metadata and this format's variant record."""

    meta: dict[str, str]
    variant: dict[str, Any]
    desc: ModelDescription
    threads: int = 0
    trust_code: bool = False  # a network defined by code stored in the bundle may be rebuilt
    trust_native: bool = False  # a format holding native code may be loaded (signed bundle, or --trust-native)


@dataclass
class Runner:
    """A format loaded in its runtime on one device.

    ``call(prepare(x))`` is one inference (finished when it returns), so bench can time
    ``call`` alone; ``runner(x)`` gives float32 logits as numpy. ``problems`` are
    disagreements found while loading; ``fallback`` says the runtime is not on the device
    asked for; ``providers`` are onnxruntime's, as the session reports them; ``cancel``,
    where the runtime has one, stops an inference in progress from another thread.
    """

    prepare: Callable[[np.ndarray], Any]
    call: Callable[[Any], Any]
    to_numpy: Callable[[Any], np.ndarray]
    problems: list[str] = field(default_factory=list)
    fallback: str | None = None
    providers: list[str] | None = None
    cancel: Callable[[], None] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.to_numpy(self.call(self.prepare(x)))


FP32 = Tolerance(1e-5, 1e-5, 1.0, None)
FP16 = Tolerance(5e-2, 2e-2, 0.99, 1.0)

Writer = Callable[[ExportContext, Path], "dict[str, Any] | None"]
Loader = Callable[[Path, str, LoadContext], Runner]


@dataclass(frozen=True)
class Format:
    """One export format or variant.

    ``write`` makes the file and returns the variant's record for ``model.json`` (None for
    a base format); ``load`` returns a ``Runner`` on a device from ``devices``. A variant
    has a ``parent`` format it derives from and the export ``flag`` that asks for it.
    """

    name: str
    file: str
    runtime: str
    bench_label: str
    write: Writer
    load: Loader
    tolerances: dict[str, Tolerance]  # by device; "cpu" also serves devices not listed
    devices: tuple[str, ...] = ("cpu",)
    parent: str | None = None
    flag: str | None = None
    needs: str | None = None  # a base format this one is converted from, exported in the same bundle
    companions: tuple[str, ...] = ()  # further files of the format (OpenVINO's weights beside its graph)
    extra: tuple[str, str] | None = None  # (module, pip extra) of an optional runtime
    writer_extra: tuple[str, str] | None = None  # (module, pip extra) the writer alone needs (int8's ladder: nncf)
    onnx_graph: bool = False  # an ONNX protobuf: verify can compare its intermediate tensors layer by layer
    native: bool = False  # holds machine code that runs when loaded
    legacy: bool = False
    reexported: bool = False  # verify exports it again from the weights and compares the bytes (see verification.reexport)
    fresh: bool = False  # its bytes depend on what the process traced before: written and re-exported in a fresh worker
    same: Callable[[Path, Path], bool] | None = None  # a writer whose bytes vary: whether two files hold the same content
    runs_code: bool = False  # loading it can run code from the file: loaded only when signed or identical to a re-export
    packages: tuple[str, ...] = ()  # distributions whose versions an export bundle records (provenance)
    kit: str = ""  # the runner of a verification kit's torch-free check.py that runs it (verification/kitcheck.py)
    flag_help: str = ""  # a variant: what its flag adds, in the export command's help
    snippet: str = ""  # the model card's "how to load"; {arch}, {channels}, {height}, {classes} are filled in

    def tolerance(self, device: str = "cpu", **overrides: float | None) -> Tolerance:
        """The default tolerance on ``device``, with the options the user set."""
        base = self.tolerances.get(device, self.tolerances["cpu"])
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def runtime_on(self, device: str) -> str:
        """The runtime's label in reports: with the device where the format runs on several."""
        return f"{self.runtime}[{device}]" if len(self.devices) > 1 else self.runtime

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the format writes."""
        return (self.file, *self.companions)

    @property
    def installed(self) -> bool:
        """Whether the format's optional package (if any) can be imported here."""
        return not self.extra or importlib.util.find_spec(self.extra[0]) is not None

    def require(self, writing: bool = False) -> None:
        """A usage error naming the pip extra when the format's optional package (``writing``: or its
        writer's) is not installed."""
        for need in (self.extra, self.writer_extra if writing else None):
            if need and importlib.util.find_spec(need[0]) is None:
                what = f"--{self.flag}" if writing and self.flag else f"the {self.name} format"
                raise MissingExtra(f"{what} needs the {need[0]} package, which is not installed: "
                                   f'pip install "cnnpipe[{need[1]}]" (from a checkout: pip install -e ".[{need[1]}]")')

    def save(self, ctx: ExportContext, path: Path) -> dict[str, Any] | None:
        """Write the file; whatever the exporter raises becomes one ``ExportFailed`` naming the format
        (the exporter's exception stays its cause, printed whole under CNNPIPE_DEBUG=1)."""
        try:
            with writing(path.parent):  # a native writer's error on a full disk is a write that failed
                record = self.write(ctx, path)
        except CnnpipeError:
            raise
        except OSError as e:
            if e.errno in STORAGE_ERRNOS:  # the disk, not the exporter: reported as a write that failed
                raise
            raise ExportFailed(f"{self.name} export failed: {type(e).__name__}: {first_line(e)}") from e
        except Exception as e:  # exporters raise many types; all mean "no file"
            raise ExportFailed(f"{self.name} export failed: {type(e).__name__}: {first_line(e)}") from e
        ctx.files[self.name] = path
        return record

    def open(self, path: Path, device: str, ctx: LoadContext) -> Runner:
        """Load the file on ``device``; whatever goes wrong becomes one CnnpipeError with the reason.
        A file holding native code is not even opened unless ``ctx`` trusts native code."""
        self.require()
        if self.native and not ctx.trust_native:
            raise NativeCodeRefused(f"{path.name}: holds native code, which runs when it is loaded; it is loaded only from a "
                               "bundle whose signature verifies with --public-key, or with --trust-native; nothing "
                               "from it was loaded")
        try:
            return self.load(path, device, ctx)
        except CnnpipeError:
            raise
        except Exception as e:  # a garbage, hostile or mismatched file raises anything
            raise LoadFailed(f"{path.name}: {self.runtime} cannot load it ({type(e).__name__}: {first_line(e)})") from e

REGISTRY: dict[str, Format] = {}


def register(*formats: Format) -> None:
    """Add formats to the table; a name or file already registered is a programming error, raised at import."""
    for fmt in formats:
        if fmt.name in REGISTRY:
            raise ValueError(f"export format {fmt.name!r} is already registered")
        if clash := [f.name for f in REGISTRY.values() if set(f.files) & set(fmt.files)]:
            raise ValueError(f"export format {fmt.name!r} writes a file of {clash[0]!r}")
        REGISTRY[fmt.name] = fmt


@contextmanager
def quiet() -> Iterator[None]:
    """Silence exporters' log lines and warnings (their failures reach the user as one error line)."""
    logging.disable(logging.CRITICAL)
    try:  # torch.export prints the graph it could not capture on stderr
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


@contextmanager
def native_quiet(stdout: bool = False) -> Iterator[None]:
    """Silence what a native runtime prints on the process's stderr (ExecuTorch logs CPU probing), and with
    ``stdout`` on its stdout too (MNN prints there, where ``--json`` output goes: Python's is flushed first)."""
    fds = (1, 2) if stdout else (2,)
    if stdout:
        sys.stdout.flush()
    saved = [os.dup(fd) for fd in fds]
    try:
        with open(os.devnull, "w") as null:
            for fd in fds:
                os.dup2(null.fileno(), fd)
            yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)


def batch_axis() -> tuple[dict[int, Any]]:
    """``torch.export``'s dynamic batch axis for the network's one input."""
    import torch

    return ({0: torch.export.Dim("batch")},)


def torch_runner(module: Any, device: str, problems: list[str]) -> Runner:
    """A ``Runner`` around a PyTorch callable on ``device`` (synchronized on CUDA, so a call is finished when it returns)."""
    import torch

    def call(x: Any) -> Any:
        with torch.no_grad():
            out = module(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return Runner(
        prepare=lambda x: torch.from_numpy(x).to(device), call=call,
        to_numpy=lambda y: y.float().cpu().numpy(), problems=problems,
    )


def needs_device(device: str) -> None:
    """A usage error when CUDA is asked for and PyTorch sees none; on CUDA, float32 stays float32: PyTorch's
    default TF32 convolutions put a ResNet18's logits 9e-3 from the CPU's (seen on an H200), as onnxruntime's
    TF32 did (its sessions get ``use_tf32=0``)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CnnpipeError("CUDA was asked for, but PyTorch sees no CUDA device here")
    if device == "cuda":  # the worker's own process: nothing else runs in it
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def same_meta(found: str | None, ctx: LoadContext, what: str) -> list[str]:
    """A problem when the metadata a file embeds (JSON text) is not the bundle's."""
    return [] if json.loads(found or "{}") == ctx.meta else [f"{what} differs from model.json"]
