"""LiteRT (TFLite): ``model.onnx`` translated to ``model.tflite`` (``tflite_graph``), run by the ai-edge-litert interpreter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .base import META_KEY, ExportContext, Format, LoadContext, Runner, Tolerance, native_quiet, quiet, register


def write_litert(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """``model.onnx`` translated operator by operator into a TFLite flatbuffer, its batch axis dynamic."""
    import onnx

    from .tflite_graph import translate

    model = onnx.load(str(ctx.parent_file("onnx")))
    path.write_bytes(translate(model, json.dumps(ctx.meta, sort_keys=True).encode()))
    return {"converter": "cnnpipe ONNX-to-LiteRT translation", "layout": "NCHW input, NHWC inside"}


def embedded_meta(data: bytes) -> dict[str, Any]:
    """The ``cnnpipe_meta`` metadata buffer of a TFLite flatbuffer ({} without one), read through the schema."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == META_KEY.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}


def load_litert(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The LiteRT interpreter (its XNNPACK CPU delegate) on the file, resized to each batch it is given."""
    with quiet():
        from ai_edge_litert.interpreter import Interpreter

    with native_quiet():
        interpreter = Interpreter(model_path=str(path), num_threads=ctx.threads or None)
    entry, exit_ = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    shape: list[tuple[int, ...]] = [()]

    def call(x: np.ndarray) -> np.ndarray:
        if x.shape != shape[0]:
            interpreter.resize_tensor_input(entry, list(x.shape), strict=True)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(entry, x)
        interpreter.invoke()
        return interpreter.get_tensor(exit_)

    found = embedded_meta(path.read_bytes())
    problems = [] if found == ctx.meta else [f"{path.name}: LiteRT metadata differs from model.json"]
    return Runner(prepare=np.ascontiguousarray, call=call, to_numpy=np.asarray, problems=problems)


register(
    Format(
        "litert", "model.tflite", "litert", "litert (xnnpack)", write_litert, load_litert,
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)}, needs="onnx", extra=("ai_edge_litert", "litert"),
        packages=("ai-edge-litert",), reexported=True, kit="litert",
        snippet="""LiteRT / TFLite (`model.tflite`; NCHW input like ONNX, dynamic batch; no torch needed):

```python
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path="model.tflite")
entry = interpreter.get_input_details()[0]["index"]
interpreter.resize_tensor_input(entry, list(x.shape), strict=True)
interpreter.allocate_tensors()
interpreter.set_tensor(entry, x)
interpreter.invoke()
logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
```""",
    ),
)
