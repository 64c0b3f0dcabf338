"""MNN: ``model.onnx`` converted by MNN's own converter to ``model.mnn``, run by MNN's Python runtime at full precision.

The converter is called through its C extension (``_tools.mnnconvert``) in a child process. MNN's
``mnnconvert`` script is never used: after converting it imports a logging module that runs
``pip install -U aliyun-log-python-sdk`` (which downgraded protobuf below what onnx needs, seen
with MNN 3.6.1) and sends the conversion's details to Alibaba's log service.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnpipeError, ExportFailed
from ..fs import writing
from .base import INPUT_NAME, OUTPUT_NAME, ExportContext, Format, LoadContext, Runner, Tolerance, native_quiet, quiet, register

MNN_SECONDS = 600
CONVERT = "import sys, _tools; _tools.mnnconvert(sys.argv)"  # its return value is not an exit status (1 on success)


def write_mnn(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """``model.onnx`` converted by MNN's converter; cnnpipe's metadata goes into the model's ``bizCode``, and the
    random UUID the converter stamps on every file is replaced by one made from ``model.onnx`` and that metadata,
    so the same weights convert to the same bytes (verify re-exports and compares them)."""
    source = ctx.parent_file("onnx")
    meta = json.dumps(ctx.meta, sort_keys=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mnn-") as tmp:
        made = Path(tmp) / "model.mnn"
        argv = ["-f", "ONNX", "--modelFile", str(source), "--MNNModel", str(made), "--bizCode", meta]
        with writing(path.parent):  # judged before the folder is cleaned up
            try:
                done = subprocess.run([sys.executable, "-c", CONVERT, *argv], capture_output=True, text=True,
                                      timeout=MNN_SECONDS, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise ExportFailed(f"mnn export failed: MNN's converter ran for more than {MNN_SECONDS} s") from None
            if done.returncode != 0 or not made.is_file() or "Converted Success" not in done.stdout:
                said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
                raise ExportFailed(f"mnn export failed: MNN's converter did not convert model.onnx "
                                   f"({said[-1] if said else f'exit status {done.returncode}'})")
            _stamp(made, hashlib.sha256(source.read_bytes() + meta.encode()).digest())
            try:
                open_module(made, 1)
            except CnnpipeError as e:
                raise ExportFailed(f"mnn export failed: MNN cannot load what its converter wrote ({e})") from None
        os.replace(made, path)
    return {"converter": "MNNConvert (ONNX)", "precision": "high"}


def _stamp(path: Path, digest: bytes) -> None:
    """Replace the file's random UUID (36 characters, found once) by the one ``digest`` makes: same length, so
    no offset of the flatbuffer moves."""
    with quiet(), native_quiet(stdout=True):
        import MNN

        random_id = MNN.get_model_uuid(str(path)).encode()
    data = path.read_bytes()
    if len(random_id) != 36 or data.count(random_id) != 1:
        raise ExportFailed("mnn export failed: the converter's file does not hold its UUID once; cannot make it reproducible")
    path.write_bytes(data.replace(random_id, str(uuid.UUID(bytes=digest[:16], version=4)).encode()))


def open_module(path: Path, threads: int) -> tuple[Any, dict[str, Any]]:
    """An MNN module of the file on the CPU at full precision, and its info (names, ``bizCode``)."""
    with quiet(), native_quiet(stdout=True):  # importing MNN and making a runtime print on stdout
        import MNN

        runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "precision": "high", "numThread": threads or 1},))
        module = MNN.nn.load_module_from_file(str(path), [INPUT_NAME], [OUTPUT_NAME], runtime_manager=runtime)
    if module is None:
        raise CnnpipeError(f"{path.name}: MNN cannot load it")
    return module, module.get_info()


def load_mnn(path: Path, device: str, ctx: LoadContext) -> Runner:
    """MNN's CPU backend at full precision, on the whole batch (the batch axis stays dynamic)."""
    import MNN

    module, info = open_module(path, ctx.threads)
    expr = MNN.expr

    def call(x: np.ndarray) -> np.ndarray:
        out = module.forward([expr.const(x, list(x.shape), expr.NCHW)])[0]
        return np.array(expr.convert(out, expr.NCHW).read(), dtype=np.float32, copy=True).reshape(len(x), -1)

    try:
        found = json.loads(info.get("bizCode") or "{}")
    except ValueError:
        found = None
    problems = [] if found == ctx.meta else [f"{path.name}: MNN bizCode metadata differs from model.json"]
    return Runner(prepare=np.ascontiguousarray, call=call, to_numpy=lambda y: y, problems=problems)


register(
    Format(
        "mnn", "model.mnn", "mnn", "mnn", write_mnn, load_mnn,
        # MNN's CPU backend at "high" precision is float32 with its own convolution algorithms (Winograd, Strassen):
        # lenet5's logits 2.2e-4 from PyTorch's, past the 1e-4 the other float32 runtimes keep
        {"cpu": Tolerance(1e-3, 1e-3, 1.0, None)},
        needs="onnx", extra=("MNN", "mnn"), packages=("mnn",), reexported=True, kit="mnn",
        snippet="""MNN (`model.mnn`, converted from `model.onnx`; dynamic batch; no torch needed):

```python
import MNN, numpy as np
runtime = MNN.nn.create_runtime_manager(({{"backend": "CPU", "precision": "high"}},))
module = MNN.nn.load_module_from_file("model.mnn", ["input"], ["logits"], runtime_manager=runtime)
out = module.forward([MNN.expr.const(x, list(x.shape), MNN.expr.NCHW)])[0]
logits = np.array(MNN.expr.convert(out, MNN.expr.NCHW).read()).reshape(len(x), -1)
```""",
    ),
)
