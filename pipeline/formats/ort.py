"""The ORT format (ONNX Runtime Mobile): ``model.onnx`` converted by onnxruntime's own converter."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

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


ORT_ITEMS = 5_000_000  # fields an ORT file's comparison reads at most: a hostile file cannot make it run for ever


def same_ort(shipped: Path, fresh: Path) -> bool:
    """Whether two ORT files hold the same session: every table, field and vector of the flatbuffer read
    through onnxruntime's own schema bindings (tensor data by sha256), not their layout, which the
    converter varies from run to run. Nothing is loaded into a runtime."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    a, b = (_content(InferenceSession.GetRootAs(p.read_bytes(), 0), [ORT_ITEMS]) for p in (shipped, fresh))
    return a == b


def _content(table: Any, budget: list[int]) -> Any:
    """A flatbuffer table as nested dicts and lists, through its generated accessors."""
    if table is None or isinstance(table, (int, float, bool, bytes, str)):
        return table
    found: dict[str, Any] = {}
    for name, method in inspect.getmembers(type(table), inspect.isfunction):
        if not name[0].isupper() or name.startswith("GetRootAs") or name == "Init" or \
                name.endswith(("Length", "IsNone", "AsNumpy", "BufferHasIdentifier")):
            continue
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError("too large to compare")
        accessor = getattr(table, name)
        arity = len(inspect.signature(method).parameters) - 1
        if arity == 0:
            found[name] = _content(accessor(), budget)
        elif arity == 1 and hasattr(table, name + "Length"):
            length = getattr(table, name + "Length")()
            array = getattr(table, name + "AsNumpy")() if hasattr(table, name + "AsNumpy") and length else None
            if array is not None and not isinstance(array, int):
                found[name] = hashlib.sha256(array.tobytes()).hexdigest()
            else:
                budget[0] -= length
                found[name] = [_content(accessor(i), budget) for i in range(max(0, min(length, budget[0] + 1)))]
    return found


register(
    Format(
        "ort", "model.ort", "onnxruntime (ORT format)", "onnxruntime .ort", write_ort, load_ort,
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)}, needs="onnx", packages=("onnxruntime",), reexported=True, kit="onnxruntime",
        same=same_ort,
        snippet="""ORT format (ONNX Runtime Mobile; the same session API as ONNX):

```python
import onnxruntime as ort
session = ort.InferenceSession("model.ort", providers=["CPUExecutionProvider"])
logits = session.run(["logits"], {{"input": x}})[0]
```""",
    ),
)
