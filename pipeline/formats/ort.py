"""The ORT format (ONNX Runtime Mobile): ``model.onnx`` converted by onnxruntime's own converter."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from ..fs import writing
from .base import ExportContext, Format, Tolerance, quiet, register
from .onnx import load_ort


def write_ort(ctx: ExportContext, path: Path) -> None:
    """``model.onnx`` converted by onnxruntime's own converter to the ORT format (ONNX Runtime Mobile)."""
    with quiet():
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ort-") as tmp:
        work = Path(tmp)
        shutil.copyfile(ctx.parent_file("onnx"), work / "model.onnx")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), quiet(), \
                writing(path.parent):  # judged before the folder is cleaned up
            convert_onnx_models_to_ort(work / "model.onnx", work / "out", [OptimizationStyle.Fixed])
        os.replace(work / "out" / "model.ort", path)


register(
    Format(
        "ort", "model.ort", "onnxruntime (ORT format)", "onnxruntime .ort", write_ort, load_ort,
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)}, needs="onnx", packages=("onnxruntime",),
        snippet="""ORT format (ONNX Runtime Mobile; the same session API as ONNX):

```python
import onnxruntime as ort
session = ort.InferenceSession("model.ort", providers=["CPUExecutionProvider"])
```""",
    ),
)
