"""NCNN: ``model.onnx`` converted by pnnx (``model.ncnn.param`` + ``model.ncnn.bin``), run by the ``ncnn`` bindings."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnpipeError, ExportFailed
from ..fs import writing
from .base import ExportContext, Format, LoadContext, Runner, Tolerance, native_quiet, register

PARAM_MAGIC = "7767517"  # the first line of every ncnn .param file
PNNX_SECONDS = 600


def write_ncnn(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """pnnx's own binary on a copy of ``model.onnx`` (its ONNX front end: the TorchScript one is built for one
    libtorch), in float32; pnnx does not check its exit status upstream, so the status, both files and their
    loading are checked here."""
    import pnnx

    shape = ",".join(str(d) for d in (1, *ctx.example.shape[1:]))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ncnn-") as tmp:
        work = Path(tmp)
        shutil.copyfile(ctx.parent_file("onnx"), work / "model.onnx")
        with writing(path.parent):  # judged before the folder is cleaned up: pnnx on a full disk writes nothing
            try:
                done = subprocess.run([pnnx.EXEC_PATH, "model.onnx", f"inputshape=[{shape}]", "fp16=0"], cwd=work,
                                      capture_output=True, text=True, timeout=PNNX_SECONDS, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise ExportFailed(f"ncnn export failed: pnnx ran for more than {PNNX_SECONDS} s") from None
            param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
            if done.returncode != 0 or not param.is_file() or not weights.is_file():
                said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
                missing = " and ".join(p.name for p in (param, weights) if not p.is_file()) or "nothing missing"
                raise ExportFailed(f"ncnn export failed: pnnx exited with {done.returncode}, without {missing} "
                                   f"({said[-1] if said else 'no message'})")
            if not param.read_text(errors="replace").startswith(PARAM_MAGIC):
                raise ExportFailed("ncnn export failed: pnnx wrote a model.ncnn.param that is not an ncnn graph")
            try:
                open_net(param, weights, 1)
            except CnnpipeError as e:
                raise ExportFailed(f"ncnn export failed: ncnn cannot load what pnnx wrote ({e})") from None
        os.replace(weights, path.with_suffix(".bin"))
        os.replace(param, path)
    return {"converter": "pnnx (ONNX front end)", "batch": "one image per extraction; batches run image by image"}


def open_net(param: Path, weights: Path, threads: int) -> Any:
    """An ``ncnn.Net`` of the two files, in float32 (no fp16 or bf16 storage or arithmetic)."""
    import ncnn

    net = ncnn.Net()
    for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, name, False)
    if threads:
        net.opt.num_threads = threads
    with native_quiet():
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise CnnpipeError(f"{param.name}: ncnn cannot load it")
    if len(net.input_names()) != 1 or len(net.output_names()) != 1:
        raise CnnpipeError(f"{param.name}: the graph has {len(net.input_names())} inputs and {len(net.output_names())} "
                           "outputs, not one of each")
    return net


def load_ncnn(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The ncnn graph: each image of a batch extracted on its own (ncnn has no batch axis)."""
    import ncnn

    net = open_net(path, path.with_suffix(".bin"), ctx.threads)
    (entry,), (exit_,) = net.input_names(), net.output_names()

    def call(x: np.ndarray) -> np.ndarray:
        rows = []
        for image in x:
            extractor = net.create_extractor()
            extractor.input(entry, ncnn.Mat(np.ascontiguousarray(image)).clone())
            status, out = extractor.extract(exit_)
            if status != 0:
                raise CnnpipeError(f"{path.name}: ncnn's extraction failed ({status})")
            rows.append(np.array(out, dtype=np.float32).reshape(-1))
        return np.stack(rows)

    return Runner(prepare=lambda x: x, call=call, to_numpy=lambda y: y)


register(
    Format(
        "ncnn", "model.ncnn.param", "ncnn", "ncnn", write_ncnn, load_ncnn, {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)},
        needs="onnx", companions=("model.ncnn.bin",), extra=("ncnn", "ncnn"), writer_extra=("pnnx", "ncnn"),
        packages=("ncnn", "pnnx"), reexported=True, kit="ncnn",
        snippet="""NCNN (`model.ncnn.param` + `model.ncnn.bin`, converted by pnnx; one image per extraction):

```python
import ncnn, numpy as np
net = ncnn.Net()
net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
net.load_param("model.ncnn.param"); net.load_model("model.ncnn.bin")
extractor = net.create_extractor()
extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])).clone())
logits = np.array(extractor.extract("out0")[1])[None]
```""",
    ),
)
