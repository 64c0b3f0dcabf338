"""Every export format in one table: how it is written, loaded, judged, timed and described.

One ``Format`` record per format or variant, in the order they are exported (ONNX first:
its opset goes into every later format's metadata). ``export``, ``verify``, ``bench``,
``predict``, the model card, ``model.json`` and the CLI's choices all read ``FORMATS``;
adding a format is one record here plus its write and load functions below.

Importing this module imports neither torch nor onnxruntime (``predict`` runs without
torch); each function imports what it needs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .description import ModelDescription
from .errors import CnnpipeError, first_line
from .onnx_session import PROVIDERS, onnx_session, stoppable_runs
from .store import STORAGE_ERRNOS, write_through_memory, writing

INPUT_NAME, OUTPUT_NAME = "input", "logits"
META_FILE = "cnnpipe.json"  # the metadata's name inside TorchScript, pt2 and AOTInductor files
META_KEY = "cnnpipe_meta"  # the metadata's name inside OpenVINO IR (rt_info) and ExecuTorch (a constant method)
PTE_MAX_BATCH = 64  # an ExecuTorch program's memory is planned for batches up to this; larger ones run in parts


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
    calibration: Callable[[], np.ndarray]  # normalized training images for int8
    dataset: str  # the reference of the dataset the model was trained on
    opset_used: int | None = None
    program: Any = None  # the torch.export program, made once by ``exported()``

    def exported(self) -> Any:
        """The ``torch.export`` program with a dynamic batch axis, shared by every format made from it."""
        if self.program is None:
            import torch

            with quiet():
                self.program = torch.export.export(self.model, (self.example,), dynamic_shapes=_batch_axis())
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
    onnx_graph: bool = False  # an ONNX protobuf: verify can compare its intermediate tensors layer by layer
    native: bool = False  # holds machine code that runs when loaded
    legacy: bool = False
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

    def require(self) -> None:
        """A usage error naming the pip extra when the format's optional package is not installed."""
        if self.extra and not self.installed:
            raise CnnpipeError(f"the {self.name} format needs the {self.extra[0]} package, which is not installed: "
                               f'pip install "cnnpipe[{self.extra[1]}]" (from a checkout: pip install -e ".[{self.extra[1]}]")')

    def save(self, ctx: ExportContext, path: Path) -> dict[str, Any] | None:
        """Write the file; whatever the exporter raises becomes one CnnpipeError naming the format."""
        try:
            with writing(path.parent):  # a native writer's error on a full disk is a write that failed
                return self.write(ctx, path)
        except CnnpipeError:
            raise
        except OSError as e:
            if e.errno in STORAGE_ERRNOS:  # the disk, not the exporter: reported as a write that failed
                raise
            raise CnnpipeError(f"{self.name} export failed: {type(e).__name__}: {first_line(e)}") from None
        except Exception as e:  # exporters raise many types; all mean "no file"
            raise CnnpipeError(f"{self.name} export failed: {type(e).__name__}: {first_line(e)}") from None

    def open(self, path: Path, device: str, ctx: LoadContext) -> Runner:
        """Load the file on ``device``; whatever goes wrong becomes one CnnpipeError with the reason.
        A file holding native code is not even opened unless ``ctx`` trusts native code."""
        self.require()
        if self.native and not ctx.trust_native:
            raise CnnpipeError(f"{path.name}: holds native code, which runs when it is loaded; it is loaded only from a "
                               "bundle whose signature verifies with --public-key, or with --trust-native; nothing "
                               "from it was loaded")
        try:
            return self.load(path, device, ctx)
        except CnnpipeError:
            raise
        except Exception as e:  # a garbage, hostile or mismatched file raises anything
            raise CnnpipeError(f"{path.name}: {self.runtime} cannot load it ({type(e).__name__}: {first_line(e)})") from None


# ---- ONNX -------------------------------------------------------------------------------


def check_onnx_graph(path: Path) -> int:
    """Full ONNX check, a symbolic batch axis, no live Dropout or training-mode BatchNorm; the opset."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise CnnpipeError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    external = [t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise CnnpipeError(f"{path}: tensor {external[0]!r} points to external data; a bundle's ONNX must be self-contained")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise CnnpipeError(f"{path}: the ONNX checker rejects the graph ({e})") from None
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        raise CnnpipeError(f"{path}: the batch axis is fixed at {batch.dim_value}, not dynamic")
    for node in graph.graph.node:
        if node.op_type == "Dropout":
            raise CnnpipeError(f"{path}: the graph has a Dropout node {node.name!r}; export in eval mode")
        if node.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i == 1 for a in node.attribute):
            raise CnnpipeError(f"{path}: BatchNormalization {node.name!r} runs in training mode")
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


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


def _batch_axis() -> tuple[dict[int, Any]]:
    import torch

    return ({0: torch.export.Dim("batch")},)


def write_onnx(ctx: ExportContext, path: Path) -> None:
    """ONNX through the dynamo exporter with a dynamic batch axis; its opset joins the metadata."""
    import onnx
    import torch

    from .onnx_variants import set_metadata

    kwargs: dict[str, Any] = {} if ctx.opset is None else {"opset_version": ctx.opset}
    try:
        with quiet():
            torch.onnx.export(
                ctx.model, (ctx.example,), str(path), dynamo=True, external_data=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=_batch_axis(),
                verbose=False, **kwargs,
            )
    except Exception as e:  # the exporter raises many types; all mean "no ONNX file"
        at = f" at opset {ctx.opset}" if ctx.opset else ""
        raise CnnpipeError(f"ONNX export failed{at}: {first_line(e)}") from None
    used = check_onnx_graph(path)
    if ctx.opset is not None and used != ctx.opset:
        raise CnnpipeError(f"ONNX export failed at opset {ctx.opset}: the exporter could only produce opset {used}")
    ctx.opset_used = used
    ctx.meta["onnx_opset"] = str(used)
    proto = onnx.load(str(path))
    set_metadata(proto, ctx.meta)
    onnx.save(proto, str(path))


def write_onnx_fp16(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """An fp16 copy of ``model.onnx``; inputs and outputs stay float32."""
    from .onnx_variants import to_fp16

    variant = {"precision": "fp16"}
    to_fp16(path.parent / FORMATS["onnx"].file, path, ctx.meta | variant)
    check_onnx_graph(path)
    return variant


def write_onnx_int8(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """Static int8 QDQ quantization of ``model.onnx``, calibrated on real training images."""
    from .onnx_variants import to_int8

    images = ctx.calibration()
    variant = {"precision": "int8", "calibration": f"{len(images)} training images of {ctx.dataset}"}
    to_int8(path.parent / FORMATS["onnx"].file, path, ctx.meta | variant, INPUT_NAME, images)
    check_onnx_graph(path)
    return variant


def load_onnx(path: Path, device: str, ctx: LoadContext) -> Runner:
    """An onnxruntime session on exactly the provider asked for, after the graph check."""
    check_onnx_graph(path)
    return load_ort(path, device, ctx)


def load_ort(path: Path, device: str, ctx: LoadContext) -> Runner:
    """An onnxruntime session on exactly the provider asked for (an ONNX or ORT-format file)."""
    try:
        session = onnx_session(path, device, ctx.threads)
    except Exception as e:  # onnxruntime raises its own exception types for files it cannot load
        raise CnnpipeError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None
    used = session.get_providers()
    run_options, cancel = stoppable_runs()
    runner = Runner(
        prepare=lambda x: x, call=lambda x: session.run(None, {INPUT_NAME: x}, run_options)[0], to_numpy=lambda y: y,
        providers=used, cancel=cancel,
    )
    if used[0] != PROVIDERS[device]:
        runner.fallback = f"{PROVIDERS[device]} was asked for but the session runs on {used[0]}"
        runner.problems.append(runner.fallback)
    if session.get_modelmeta().custom_metadata_map != ctx.meta | ctx.variant:
        runner.problems.append(f"{path.name}: ONNX metadata_props differ from the bundle's model.json")
    return runner


# ---- PyTorch runtimes -------------------------------------------------------------------


def _torch_runner(module: Any, device: str, problems: list[str]) -> Runner:
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


def _needs(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CnnpipeError("CUDA was asked for, but PyTorch sees no CUDA device here")


def _same_meta(found: str | None, ctx: LoadContext, what: str) -> list[str]:
    return [] if json.loads(found or "{}") == ctx.meta else [f"{what} differs from model.json"]


def write_torchscript(ctx: ExportContext, path: Path) -> None:
    """A traced TorchScript module; the metadata rides along as an extra file."""
    import torch

    with quiet():
        traced = torch.jit.trace(ctx.model, ctx.example)
        write_through_memory(path, lambda f: torch.jit.save(traced, f, _extra_files={META_FILE: json.dumps(ctx.meta)}))


def load_torchscript(path: Path, device: str, ctx: LoadContext) -> Runner:
    import torch

    _needs(device)
    extra = {META_FILE: ""}
    with quiet():  # TorchScript is deprecated, still asked for
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
    return _torch_runner(module, device, _same_meta(extra[META_FILE], ctx, "TorchScript extra file"))


def write_pt2(ctx: ExportContext, path: Path) -> None:
    """A ``torch.export`` program with a dynamic batch axis, the metadata as an extra file."""
    import torch

    program = ctx.exported()
    with quiet():
        write_through_memory(path, lambda f: torch.export.save(program, f, extra_files={META_FILE: json.dumps(ctx.meta)}))


def load_pt2(path: Path, device: str, ctx: LoadContext) -> Runner:
    import torch

    extra = {META_FILE: ""}
    with quiet():
        module = torch.export.load(str(path), extra_files=extra).module()
    return _torch_runner(module, device, _same_meta(extra[META_FILE], ctx, "pt2 extra file"))


def write_aoti(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """The pt2 program compiled by AOTInductor for this machine; records what it was compiled for."""
    from .aoti import compile_package

    return {"compiled_for": compile_package(ctx.exported(), path, ctx.meta)}


def load_aoti(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The package, loaded only where this CPU has the instructions model.json says it needs."""
    from .aoti import load_package

    compiled_for = ctx.variant.get("compiled_for", {})
    package, built = load_package(path, compiled_for)
    problems = _same_meta(built.get(META_FILE), ctx, "AOTInductor metadata")
    if built.get("AOTI_CPU_ISA", "").lower() != compiled_for.get("cpu_isa", ""):
        problems.append(f"{path.name} holds code for '{built.get('AOTI_CPU_ISA', '')}', model.json says "
                        f"'{compiled_for.get('cpu_isa', '')}'")
    return _torch_runner(package, device, problems)


def write_safetensors(ctx: ExportContext, path: Path) -> None:
    """The weights, with the metadata as safetensors ``__metadata__``."""
    from .modelfile import save_weights

    save_weights(ctx.model.state_dict(), path, ctx.meta)


def load_safetensors(path: Path, device: str, ctx: LoadContext) -> Runner:
    """A freshly built network on ``device`` with the file's weights."""
    from safetensors import safe_open

    from .modelfile import build_from, load_weights

    _needs(device)
    model = build_from(ctx.desc, path.parent, ctx.trust_code)
    load_weights(model, path)
    model.eval().to(device)
    with safe_open(str(path), framework="pt") as f:
        problems = [] if f.metadata() == ctx.meta else ["safetensors __metadata__ differs from model.json"]
    return _torch_runner(model, device, problems)


# ---- OpenVINO, ExecuTorch, ONNX Runtime's mobile format ------------------------------------


def write_openvino(ctx: ExportContext, path: Path) -> None:
    """OpenVINO IR converted from the ``torch.export`` program: float32 weights (``.bin`` beside the ``.xml``)."""
    import openvino as ov

    with quiet():
        model = ov.convert_model(ctx.exported())
    model.set_rt_info(json.dumps(ctx.meta), [META_KEY])
    ov.save_model(model, str(path), compress_to_fp16=False)


def write_openvino_fp16(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """The OpenVINO IR with its weights compressed to fp16 (computed in float32 on the CPU)."""
    import openvino as ov

    variant = {"precision": "fp16"}
    model = ov.Core().read_model(str(path.parent / FORMATS["openvino"].file))
    model.set_rt_info(json.dumps(ctx.meta | variant), [META_KEY])
    ov.save_model(model, str(path), compress_to_fp16=True)
    return variant


def load_openvino(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The IR compiled by the OpenVINO CPU plugin in float32 (it would pick bf16 on CPUs that have it)."""
    import openvino as ov

    core = ov.Core()
    with native_quiet():  # its frontends log on stderr while they try the file
        model = core.read_model(str(path))
    found = model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else "{}"
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if ctx.threads:
        config["INFERENCE_NUM_THREADS"] = ctx.threads
    compiled = core.compile_model(model, "CPU", config)
    problems = [] if json.loads(found) == ctx.meta | ctx.variant else [f"{path.name}: OpenVINO rt_info differs from model.json"]
    return Runner(prepare=lambda x: x, call=lambda x: compiled([x])[0], to_numpy=np.asarray, problems=problems)


def write_executorch(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """An ExecuTorch program lowered to the XNNPACK delegate, its memory planned for batches up to
    PTE_MAX_BATCH (exported from an example of that batch: with a smaller one the delegate plans
    for fewer); the metadata is a constant method."""
    import torch

    with quiet():  # importing executorch logs a torch warning
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    example = ctx.example[:1].expand(PTE_MAX_BATCH, *ctx.example.shape[1:]).contiguous()
    with quiet():
        program = torch.export.export(ctx.model, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=PTE_MAX_BATCH)},))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods={META_KEY: json.dumps(ctx.meta)})
        path.write_bytes(lowered.to_executorch(
            ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass())).buffer)
    return {"delegate": "XNNPACK", "max_batch": PTE_MAX_BATCH}


@contextmanager
def native_quiet() -> Iterator[None]:
    """Silence what a native runtime prints on the process's stderr (ExecuTorch logs CPU probing)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_executorch(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The ``.pte`` in the ExecuTorch runtime's Python bindings; batches over its planned size run in parts."""
    import torch

    with native_quiet(), quiet():
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(str(path))
        forward = program.load_method("forward")
        found = program.load_method(META_KEY).execute([])[0] if META_KEY in program.method_names else "{}"
    limit = int(ctx.variant.get("max_batch", PTE_MAX_BATCH))

    def call(x: Any) -> Any:
        with native_quiet():
            return torch.cat([forward.execute([x[i:i + limit]])[0] for i in range(0, len(x), limit)])

    problems = [] if json.loads(found) == ctx.meta else [f"{path.name}: ExecuTorch metadata differs from model.json"]
    return Runner(prepare=lambda x: torch.from_numpy(x), call=call, to_numpy=lambda y: y.numpy(), problems=problems)


def write_ort(ctx: ExportContext, path: Path) -> None:
    """``model.onnx`` converted by onnxruntime's own converter to the ORT format (ONNX Runtime Mobile)."""
    with quiet():
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ort-") as tmp:
        work = Path(tmp)
        shutil.copyfile(path.parent / FORMATS["onnx"].file, work / "model.onnx")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), quiet(), \
                writing(path.parent):  # judged before the folder is cleaned up
            convert_onnx_models_to_ort(work / "model.onnx", work / "out", [OptimizationStyle.Fixed])
        os.replace(work / "out" / "model.ort", path)


# ---- the table --------------------------------------------------------------------------

_FP32 = Tolerance(1e-5, 1e-5, 1.0, None)
_FP16 = Tolerance(5e-2, 2e-2, 0.99, 1.0)

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format(
        "onnx", "model.onnx", "onnxruntime", "onnxruntime", write_onnx, load_onnx,
        # the cuda sessions run in float32 (use_tf32=0, see onnx_session.py)
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None), "cuda": Tolerance(1e-3, 1e-3, 1.0, None)},
        devices=("cpu", "cuda"), onnx_graph=True,
        snippet="""ONNX (onnxruntime only, no torch needed):

```python
import json, onnxruntime as ort
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map   # classes, mean, std, input_shape, ...
classes = json.loads(meta["classes"])
logits = session.run(["logits"], {{"input": x}})[0]
```

On CUDA, ask for `("CUDAExecutionProvider", {{"use_tf32": "0"}})`: onnxruntime otherwise
runs float32 convolutions in TF32, which verify does not cover.""",
    ),
    Format(
        "pt2", "model.pt2", "torch.export", "pt2", write_pt2, load_pt2, {"cpu": _FP32},
        snippet="""pt2 (`torch.export` program):

```python
import torch
model = torch.export.load("model.pt2").module()
logits = model(torch.from_numpy(x))
```""",
    ),
    Format(
        "safetensors", "model.safetensors", "torch (fresh model)", "pytorch eager", write_safetensors,
        load_safetensors,
        {"cpu": _FP32, "cuda": Tolerance(1e-3, 1e-3, 1.0, None)},  # cuDNN convolutions use TF32 by default
        devices=("cpu", "cuda"),
        snippet="""safetensors (weights into a freshly built network):

```python
from cnnpipe.nets.sources import build_arch
from safetensors.torch import load_file
model = build_arch("{arch}", {channels}, {height}, {classes})[0].eval()
model.load_state_dict(load_file("model.safetensors"))
```""",
    ),
    Format(
        "openvino", "model.openvino.xml", "openvino", "openvino", write_openvino, load_openvino, {"cpu": _FP32},
        companions=("model.openvino.bin",), extra=("openvino", "openvino"),
        snippet="""OpenVINO IR (`model.openvino.xml` with its weights `model.openvino.bin`):

```python
import openvino as ov
compiled = ov.Core().compile_model("model.openvino.xml", "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
logits = compiled([x])[0]
```

The f32 hint keeps the CPU plugin in float32; on CPUs with bf16 it would otherwise pick bf16.""",
    ),
    Format(
        "executorch", "model.pte", "executorch (xnnpack)", "executorch", write_executorch, load_executorch,
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)}, extra=("executorch", "executorch"),
        snippet=f"""ExecuTorch (`model.pte`, XNNPACK delegate; batches of 1 to {PTE_MAX_BATCH}):

```python
import torch
from executorch.runtime import Runtime
forward = Runtime.get().load_program("model.pte").load_method("forward")
logits = forward.execute([torch.from_numpy(x)])[0]
```""",
    ),
    Format(
        "ort", "model.ort", "onnxruntime (ORT format)", "onnxruntime .ort", write_ort, load_ort,
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)}, needs="onnx",
        snippet="""ORT format (ONNX Runtime Mobile; the same session API as ONNX):

```python
import onnxruntime as ort
session = ort.InferenceSession("model.ort", providers=["CPUExecutionProvider"])
```""",
    ),
    Format(
        "torchscript", "model.torchscript.pt", "torch.jit", "torchscript", write_torchscript, load_torchscript,
        {"cpu": _FP32}, legacy=True,
        snippet="""TorchScript (legacy: deprecated upstream; prefer pt2):

```python
import torch
model = torch.jit.load("model.torchscript.pt").eval()
logits = model(torch.from_numpy(x))
```""",
    ),
    Format(
        "onnx-fp16", "model.fp16.onnx", "onnxruntime", "onnxruntime fp16", write_onnx_fp16, load_onnx,
        {"cpu": _FP16}, devices=("cpu", "cuda"), parent="onnx", flag="fp16", onnx_graph=True,
    ),
    Format(
        "onnx-int8", "model.int8.onnx", "onnxruntime", "onnxruntime int8", write_onnx_int8, load_onnx,
        {"cpu": Tolerance(None, 0.0, 0.95, 2.0)}, devices=("cpu", "cuda"), parent="onnx", flag="int8", onnx_graph=True,
    ),
    Format(
        "openvino-fp16", "model.openvino.fp16.xml", "openvino", "openvino fp16", write_openvino_fp16, load_openvino,
        {"cpu": _FP16}, parent="openvino", flag="fp16", companions=("model.openvino.fp16.bin",),
        extra=("openvino", "openvino"),
    ),
    Format(
        "pt2-aoti", "model.aoti.pt2", "AOTInductor", "aoti", write_aoti, load_aoti,
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)}, parent="pt2", flag="aoti", native=True,
    ),
)}

BASE_FORMATS = tuple(name for name, f in FORMATS.items() if f.parent is None)
VARIANT_FLAGS = tuple(dict.fromkeys(f.flag for f in FORMATS.values() if f.flag))


def load_snippets(desc: ModelDescription) -> str:
    """The model card's "how to load" section for every base format."""
    fields = {"arch": desc.arch, "channels": desc.input.channels, "height": desc.input.height,
              "classes": len(desc.classes)}
    return "\n\n".join(f.snippet.format(**fields) for f in FORMATS.values() if f.snippet)
