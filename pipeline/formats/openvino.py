"""OpenVINO IR: converted from the ``torch.export`` program, float32 and fp16-compressed weights,
compiled by the CPU plugin in float32; its int8 variant (NNCF, the int8 ladder of ``formats.int8``)
and its bf16 variant (the same float32 IR, run by the CPU plugin in bfloat16 where the CPU has it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnpipeError
from .base import FP16, FP32, META_KEY, ExportContext, Format, LoadContext, Runner, Tolerance, native_quiet, quiet, register
from .int8 import Backend, Rung, nncf_data, recipe, write_int8

WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")
# bfloat16 keeps 8 bits of mantissa: logits move by a few hundredths (0.03 on LeNet-5, measured on a Sapphire Rapids CPU)
BF16 = Tolerance(1.5e-1, 5e-2, 0.99, 1.0)


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

    return _with_meta(ctx, ov.Core().read_model(str(ctx.parent_file("openvino"))), {"precision": "fp16"}, path, True)


def _with_meta(ctx: ExportContext, model: Any, variant: dict[str, Any], path: Path, compress: bool) -> dict[str, Any]:
    import openvino as ov

    model.set_rt_info(json.dumps(ctx.meta | variant), [META_KEY])
    ov.save_model(model, str(path), compress_to_fp16=compress)
    return variant


def write_openvino_bf16(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """The float32 IR, recorded to run in bfloat16 (the loader compiles it so; a CPU without bf16 refuses)."""
    import openvino as ov

    return _with_meta(ctx, ov.Core().read_model(str(ctx.parent_file("openvino"))), {"precision": "bf16"}, path, False)


def _quantize(rung: Rung, source: Path, target: Path, images: np.ndarray, keep_float: list[str]) -> None:
    """``source`` quantized by NNCF on ``images`` with ``rung``'s preset into ``target``, ``keep_float`` left in float."""
    import nncf
    import openvino as ov

    preset = getattr(nncf.QuantizationPreset, rung.option("preset", "PERFORMANCE"))
    with quiet():
        model = nncf.quantize(ov.Core().read_model(str(source)), nncf_data(images, _feed), preset=preset,
                              subset_size=len(images),
                              ignored_scope=nncf.IgnoredScope(names=keep_float) if keep_float else None)
    ov.save_model(model, str(target), compress_to_fp16=False)


def _feed(x: np.ndarray) -> np.ndarray:
    return x


def _right(model: Any, batches: Any) -> np.ndarray:
    """Which images an OpenVINO model classifies right, on the CPU plugin in float32 (NNCF's accuracy control
    hands over the model it compiled itself)."""
    import openvino as ov

    compiled = model if isinstance(model, ov.CompiledModel) else \
        ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    found = [np.asarray(compiled([x])[0]).argmax(1) == y for x, y in batches]
    return np.concatenate(found) if found else np.zeros(0, bool)


def _quantized_weights(node: Any) -> bool:
    """Whether a weight input comes, through dequantizing conversions, from an 8-bit constant or a FakeQuantize."""
    kind = node.get_type_name()
    if kind == "FakeQuantize" or (kind == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8")):
        return True
    return kind in ("Convert", "Multiply", "Subtract", "Reshape") and any(
        _quantized_weights(node.input_value(i).get_node()) for i in range(node.get_input_size()))


def _float_nodes(source: Any, quantized: Any) -> list[str]:
    """The weighted operations of ``source`` whose weights ``quantized`` left in float."""
    names = {op.get_friendly_name() for op in source.get_ops() if op.get_type_name() in WEIGHTED_OPS}
    return sorted(op.get_friendly_name() for op in quantized.get_ops() if op.get_friendly_name() in names
                  and not _quantized_weights(op.input_value(1).get_node()))


def _load_ir(path: Path) -> Any:
    import openvino as ov

    return ov.Core().read_model(str(path))


def _save_ir(model: Any, path: Path) -> None:
    import openvino as ov

    ov.save_model(model, str(path), compress_to_fp16=False)


OV_INT8 = Backend(
    rungs=(Rung("nncf"), Rung("nncf-mixed", (("preset", "MIXED"),)),
           Rung("nncf-accuracy-control", accuracy_control=True)),
    quantize=_quantize, load=_load_ir, save=_save_ir, right=_right, float_nodes=_float_nodes, feed=_feed, suffix=".xml",
)


def write_openvino_int8(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """The OpenVINO IR quantized to int8 by NNCF, through the int8 ladder (``formats.int8``)."""
    import openvino as ov

    rung, count, keep = write_int8("openvino-int8", OV_INT8, ctx, ctx.parent_file("openvino"), path)
    variant = {"precision": "int8", "calibration": f"{count} training images of {ctx.dataset}",
               "recipe": recipe(rung, count, keep)}
    core = ov.Core()
    core.set_property({"ENABLE_MMAP": False})  # read into memory: the file is written again in place
    return _with_meta(ctx, core.read_model(str(path)), variant, path, False)


_AUTO_NAME = re.compile(rb'"([A-Za-z]+)_\d+"')  # names OpenVINO numbers from a process-wide counter


def same_ir(shipped: Path, fresh: Path) -> bool:
    """Whether two IRs hold the same graph and weights: the weights byte for byte, the graph but for the
    numbers OpenVINO appends to the names of the nodes NNCF inserts (a process-wide counter)."""
    def graph(path: Path) -> bytes:
        return _AUTO_NAME.sub(rb'"\1_#"', path.read_bytes())

    return graph(shipped) == graph(fresh) and shipped.with_suffix(".bin").read_bytes() == fresh.with_suffix(".bin").read_bytes()


def load_openvino(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The IR compiled by the OpenVINO CPU plugin in float32 (it would pick bf16 on CPUs that have it), or in
    bfloat16 for the bf16 variant, which a CPU without bf16 refuses rather than run in float32."""
    import openvino as ov

    core = ov.Core()
    with native_quiet():  # its frontends log on stderr while they try the file
        model = core.read_model(str(path))
    found = model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else "{}"
    precision = "bf16" if ctx.variant.get("precision") == "bf16" else "f32"
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
    if ctx.threads:
        config["INFERENCE_NUM_THREADS"] = ctx.threads
    compiled = core.compile_model(model, "CPU", config)
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if precision == "bf16" and "bfloat16" not in used and "bf16" not in used:
        raise CnnpipeError(f"{path.name}: this CPU has no bfloat16 arithmetic (OpenVINO would run it in {used}): "
                           "verify the bf16 variant on a CPU with AVX512-BF16 or AMX")
    problems = [] if json.loads(found) == ctx.meta | ctx.variant else [f"{path.name}: OpenVINO rt_info differs from model.json"]
    return Runner(prepare=lambda x: x, call=lambda x: compiled([x])[0], to_numpy=np.asarray, problems=problems)


register(
    Format(
        "openvino", "model.openvino.xml", "openvino", "openvino", write_openvino, load_openvino, {"cpu": FP32},
        companions=("model.openvino.bin",), extra=("openvino", "openvino"), packages=("openvino",), reexported=True,
        kit="openvino",
        snippet="""OpenVINO IR (`model.openvino.xml` with its weights `model.openvino.bin`):

```python
import openvino as ov
compiled = ov.Core().compile_model("model.openvino.xml", "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
logits = compiled([x])[0]
```

The f32 hint keeps the CPU plugin in float32; on CPUs with bf16 it would otherwise pick bf16.""",
    ),
    Format(
        "openvino-fp16", "model.openvino.fp16.xml", "openvino", "openvino fp16", write_openvino_fp16, load_openvino,
        {"cpu": FP16}, parent="openvino", flag="fp16", companions=("model.openvino.fp16.bin",), reexported=True,
        extra=("openvino", "openvino"), packages=("openvino",), kit="openvino",
        flag_help="model.openvino.fp16.xml (OpenVINO IR with fp16 weights)",
    ),
    Format(
        "openvino-int8", "model.openvino.int8.xml", "openvino", "openvino int8", write_openvino_int8, load_openvino,
        {"cpu": Tolerance(None, 0.0, 0.95, 2.0)}, parent="openvino", flag="int8", companions=("model.openvino.int8.bin",),
        reexported=True, same=same_ir, extra=("openvino", "openvino"), writer_extra=("nncf", "int8"), kit="openvino",
        packages=("openvino", "nncf"), flag_help="model.openvino.int8.xml (NNCF int8, by the same ladder and limit)",
    ),
    Format(
        "openvino-bf16", "model.openvino.bf16.xml", "openvino", "openvino bf16", write_openvino_bf16, load_openvino,
        {"cpu": BF16}, parent="openvino", flag="bf16", companions=("model.openvino.bf16.bin",), reexported=True,
        extra=("openvino", "openvino"), packages=("openvino",), kit="openvino",
        flag_help="model.openvino.bf16.xml (the float32 IR, run by the CPU plugin in bfloat16; verify needs a CPU "
                  "with AVX512-BF16 or AMX)",
    ),
)
