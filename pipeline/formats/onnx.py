"""ONNX in onnxruntime: the fp32 file, its fp16 and int8 variants, the graph check, and sessions
on exactly the provider asked for. Importing this module imports neither torch nor onnxruntime."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnpipeError, ExportFailed, LoadFailed, first_line
from .base import (
    FP16,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportContext,
    Format,
    LoadContext,
    Runner,
    Tolerance,
    batch_axis,
    quiet,
    register,
)
from .int8 import Backend, Rung, nncf_data, recipe, write_int8

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# onnxruntime's CUDA provider runs float32 convolutions and matrix products in TF32 by default
# (logits off by ~1e-2 on an H100); cnnpipe's sessions keep float32 so that what verify proved is what runs.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"cpu": {}, "cuda": {"use_tf32": "0"}}


def onnx_session(path: Path | bytes, provider: str, threads: int = 0) -> Any:
    """A session on ``provider`` only (of a file, or of a serialized model); callers compare ``get_providers()``
    to refuse a silent fallback.

    ``threads`` sets intra-op threads (0: onnxruntime's default).
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # a provider that cannot start is reported by the caller, not logged
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures reach the caller as exceptions (a run stopped by --timeout too)
    options.intra_op_num_threads = threads
    if provider == "cuda":
        _preload_cuda_libraries(ort)
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=[(ORT_PROVIDERS[provider], PROVIDER_OPTIONS[provider])])


def stoppable_runs() -> tuple[Any, Callable[[], None]]:
    """``RunOptions`` to pass to ``session.run``, and a function another thread calls to stop a run
    that uses them (it and every later run stop at the next node, inside a ``Loop`` too)."""
    import onnxruntime as ort

    options = ort.RunOptions()

    def stop() -> None:
        options.terminate = True

    return options, stop


def _preload_cuda_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries of pip's nvidia-* packages, so CUDA works without torch imported."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu 1.21 and later
    if preload is not None:
        try:  # it prints what it could not find; stdout may be carrying --json
            with contextlib.redirect_stdout(io.StringIO()):
                preload(cuda=True, cudnn=True, msvc=False)
        except Exception:  # noqa: BLE001 - libraries found another way still work; a missing one is reported by the caller
            pass


# ---- the graph and its variants ----------------------------------------------------------


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


def set_metadata(proto: Any, meta: dict[str, str]) -> None:
    """Replace a model's ``metadata_props`` with ``meta``."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node follows the nodes whose outputs it reads."""
    import onnx

    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise CnnpipeError("the fp16 graph has a cycle or an undefined input; cannot order it")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in runnable]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def to_fp16(source: Path, target: Path, meta: dict[str, str]) -> None:
    """An fp16 copy of an fp32 ONNX model; inputs and outputs stay float32 for its callers."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _toposort(proto.graph)  # the converter puts its input casts after the nodes that read them
    set_metadata(proto, meta)
    onnx.save(proto, str(target))


STACK_TRACE = "pkg.torch.onnx.stack_trace"


def write_onnx(ctx: ExportContext, path: Path) -> None:
    """ONNX through the dynamo exporter with a dynamic batch axis; its opset joins the metadata."""
    import onnx
    import torch

    kwargs: dict[str, Any] = {} if ctx.opset is None else {"opset_version": ctx.opset}
    try:
        with quiet():
            torch.onnx.export(
                ctx.model, (ctx.example,), str(path), dynamo=True, external_data=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=batch_axis(),
                verbose=False, **kwargs,
            )
    except Exception as e:  # the exporter raises many types; all mean "no ONNX file"
        at = f" at opset {ctx.opset}" if ctx.opset else ""
        raise ExportFailed(f"ONNX export failed{at}: {first_line(e)}") from e
    used = check_onnx_graph(path)
    if ctx.opset is not None and used != ctx.opset:
        raise CnnpipeError(f"ONNX export failed at opset {ctx.opset}: the exporter could only produce opset {used}")
    ctx.opset_used = used
    ctx.meta["onnx_opset"] = str(used)
    proto = onnx.load(str(path))
    set_metadata(proto, ctx.meta)
    for node in proto.graph.node:  # the exporting process's call stack: its install paths, not the model
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(proto, str(path))


def write_onnx_fp16(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """An fp16 copy of ``model.onnx``; inputs and outputs stay float32."""
    variant = {"precision": "fp16"}
    to_fp16(ctx.parent_file("onnx"), path, ctx.meta | variant)
    check_onnx_graph(path)
    return variant


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over batches of normalized images, all of one size (the
    largest divisor of the count up to ``batch``): the Entropy and Percentile calibrators stack each tensor's
    batches into one array and fail on a ragged last batch (120 images in batches of 32 did)."""

    def __init__(self, images: np.ndarray, batch: int = 32):
        batch = max(d for d in range(1, max(1, min(batch, len(images))) + 1) if len(images) % d == 0)
        self.batches = iter([{INPUT_NAME: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _quantize(rung: Rung, source: Path, target: Path, images: np.ndarray, keep_float: list[str]) -> None:
    """``source`` quantized by ``rung`` on ``images`` into ``target``, the ``keep_float`` nodes left in float:
    onnxruntime's static QDQ (uint8 activations, int8 weights), or NNCF's."""
    if rung.accuracy_control:
        import nncf
        import onnx

        with quiet():
            model = nncf.quantize(onnx.load(str(source)), nncf_data(images, _feed), subset_size=len(images),
                                  ignored_scope=nncf.IgnoredScope(names=keep_float) if keep_float else None)
        onnx.save(model, str(target))
        return
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        with quiet():
            quantize_static(
                str(prepared), str(target), CalibrationReader(images), quant_format=QuantFormat.QDQ,
                per_channel=rung.option("per_channel", True), reduce_range=rung.option("reduce_range", False),
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, rung.option("method", "MinMax")), nodes_to_exclude=keep_float,
            )


def _right(model: Any, batches: Any) -> np.ndarray:
    """Which images an ONNX model (a ModelProto) classifies right, on onnxruntime's CPU provider."""
    session = onnx_session(model.SerializeToString(), "cpu", 0)
    found = [session.run(None, {INPUT_NAME: x})[0].argmax(1) == y for x, y in batches]
    return np.concatenate(found) if found else np.zeros(0, bool)


def _float_nodes(source: Any, quantized: Any) -> list[str]:
    """The nodes of ``source`` that ``quantized`` left in float: a convolution or matrix product none of whose
    inputs comes from a DequantizeLinear."""
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in quantized.graph.node}
    return sorted(n.name for n in source.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")
                  and n.name in by_name and not any(i in dequantized for i in by_name[n.name].input))


def _feed(x: np.ndarray) -> dict[str, np.ndarray]:
    return {INPUT_NAME: x}


def _load_proto(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _save_proto(model: Any, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))


ORT_INT8 = Backend(
    rungs=(
        Rung("minmax"),  # cnnpipe's recipe before the ladder: MinMax, per-channel weights
        Rung("entropy", (("method", "Entropy"),)),
        Rung("percentile", (("method", "Percentile"),)),
        Rung("minmax-per-tensor", (("per_channel", False),)),
        Rung("minmax-reduce-range", (("reduce_range", True),), needs_no_vnni=True),
        Rung("minmax-4x-images", images_factor=4),
        Rung("nncf-accuracy-control", accuracy_control=True),
    ),
    quantize=_quantize, load=_load_proto, save=_save_proto, right=_right, float_nodes=_float_nodes, feed=_feed,
    suffix=".onnx",
)


def write_onnx_int8(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """Static int8 QDQ quantization of ``model.onnx`` by the int8 ladder (``formats.int8``)."""
    rung, count, keep = write_int8("onnx-int8", ORT_INT8, ctx, ctx.parent_file("onnx"), path)
    variant = {"precision": "int8", "calibration": f"{count} training images of {ctx.dataset}",
               "recipe": recipe(rung, count, keep)}
    proto = _load_proto(path)
    set_metadata(proto, ctx.meta | variant)
    _save_proto(proto, path)
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
        raise LoadFailed(f"{path}: onnxruntime cannot load it ({first_line(e)})") from e
    used = session.get_providers()
    run_options, cancel = stoppable_runs()
    runner = Runner(
        prepare=lambda x: x, call=lambda x: session.run(None, {INPUT_NAME: x}, run_options)[0], to_numpy=lambda y: y,
        providers=used, cancel=cancel,
    )
    if used[0] != ORT_PROVIDERS[device]:
        runner.fallback = f"{ORT_PROVIDERS[device]} was asked for but the session runs on {used[0]}"
        runner.problems.append(runner.fallback)
    if session.get_modelmeta().custom_metadata_map != ctx.meta | ctx.variant:
        runner.problems.append(f"{path.name}: ONNX metadata_props differ from the bundle's model.json")
    return runner


register(
    Format(
        "onnx", "model.onnx", "onnxruntime", "onnxruntime", write_onnx, load_onnx,
        # the cuda sessions run in float32 (use_tf32=0, see PROVIDER_OPTIONS)
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None), "cuda": Tolerance(1e-3, 1e-3, 1.0, None)},
        devices=("cpu", "cuda"), onnx_graph=True, reexported=True, packages=ONNX_PACKAGES, kit="onnxruntime",
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
        "onnx-fp16", "model.fp16.onnx", "onnxruntime", "onnxruntime fp16", write_onnx_fp16, load_onnx,
        {"cpu": FP16}, devices=("cpu", "cuda"), parent="onnx", flag="fp16", onnx_graph=True, reexported=True,
        packages=ONNX_PACKAGES, kit="onnxruntime", flag_help="model.fp16.onnx (fp16 weights, float32 inputs and outputs)",
    ),
    Format(
        "onnx-int8", "model.int8.onnx", "onnxruntime", "onnxruntime int8", write_onnx_int8, load_onnx,
        {"cpu": Tolerance(None, 0.0, 0.95, 2.0)}, devices=("cpu", "cuda"), parent="onnx", flag="int8", onnx_graph=True,
        reexported=True, packages=(*ONNX_PACKAGES, "nncf"), writer_extra=("nncf", "int8"), kit="onnxruntime",
        flag_help="model.int8.onnx (static quantization: the first recipe of the int8 ladder within --max-int8-drop)",
    ),
)
