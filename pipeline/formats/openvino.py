"""OpenVINO IR: converted from the ``torch.export`` program, float32 and fp16-compressed weights,
compiled by the CPU plugin in float32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .base import FP16, FP32, META_KEY, ExportContext, Format, LoadContext, Runner, native_quiet, quiet, register


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
    model = ov.Core().read_model(str(ctx.parent_file("openvino")))
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


register(
    Format(
        "openvino", "model.openvino.xml", "openvino", "openvino", write_openvino, load_openvino, {"cpu": FP32},
        companions=("model.openvino.bin",), extra=("openvino", "openvino"), packages=("openvino",), reexported=True,
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
        extra=("openvino", "openvino"), packages=("openvino",),
        flag_help="model.openvino.fp16.xml (OpenVINO IR with fp16 weights)",
    ),
)
