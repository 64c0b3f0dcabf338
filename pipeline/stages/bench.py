"""Latency and throughput of a bundle in each runtime: PyTorch eager, TorchScript, pt2 (and AOTInductor),
onnxruntime and its variants."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnpipe.aoti import load_package
from cnnpipe.errors import CnnpipeError
from cnnpipe.modelfile import MODEL_JSON, build_from, load_weights
from cnnpipe.onnx_session import PROVIDERS, onnx_session
from cnnpipe.stages.export import FILES, INPUT_NAME
from cnnpipe.store import Workspace

Call = Callable[[], Any]


@dataclass
class BenchResult:
    """One row per runtime and batch size: p50/p99 latency of a call and images/s."""

    bundle: str
    threads: int
    input_shape: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)


def time_calls(call: Call, seconds: float, warmup: int = 5, min_calls: int = 20) -> np.ndarray:
    """Seconds per call of ``call``, after ``warmup`` calls, for about ``seconds`` (at least ``min_calls``)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def _torch_call(module: Any, x: np.ndarray, device: str) -> Call:
    tensor = torch.from_numpy(x).to(device)

    def call() -> Any:
        with torch.no_grad():
            out = module(tensor)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def _runtimes(bundle: Any, desc: dict[str, Any], threads: int) -> dict[str, Callable[[np.ndarray], Call]]:
    """Every runtime this bundle and machine can run, as ``make_call(batch) -> call``."""
    formats = bundle.results.get("formats", [])
    found: dict[str, Callable[[np.ndarray], Call]] = {}
    if "safetensors" in formats:
        model = build_from(desc)
        load_weights(model, bundle.file(FILES["safetensors"]))
        model.eval()
        found["pytorch eager (cpu)"] = lambda x: _torch_call(model, x, "cpu")
        if torch.cuda.is_available():
            gpu_model = build_from(desc)
            load_weights(gpu_model, bundle.file(FILES["safetensors"]))
            gpu_model = gpu_model.eval().cuda()
            found["pytorch eager (cuda)"] = lambda x: _torch_call(gpu_model, x, "cuda")
    if "torchscript" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(bundle.file(FILES["torchscript"])), map_location="cpu").eval()
        found["torchscript (cpu)"] = lambda x: _torch_call(scripted, x, "cpu")
    if "pt2" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(bundle.file(FILES["pt2"]))).module()
        found["pt2 (cpu)"] = lambda x: _torch_call(program, x, "cpu")
    if "pt2-aoti" in formats:
        package, _ = load_package(bundle.file(FILES["pt2-aoti"]), desc["variants"]["pt2-aoti"]["compiled_for"])
        found["aoti (cpu)"] = lambda x: _torch_call(package, x, "cpu")
    onnx_files = {"onnx": "onnxruntime", "onnx-fp16": "onnxruntime fp16", "onnx-int8": "onnxruntime int8"}
    for fmt in (f for f in onnx_files if f in formats):
        import onnxruntime as ort

        for provider in ("cpu", "cuda"):
            if PROVIDERS[provider] not in ort.get_available_providers():
                continue
            session = onnx_session(bundle.file(FILES[fmt]), provider, threads)
            if session.get_providers()[0] != PROVIDERS[provider]:
                continue  # CUDA built in but not usable here: not measured, never a silent CPU run
            found[f"{onnx_files[fmt]} ({provider})"] = lambda x, s=session: (lambda: s.run(None, {INPUT_NAME: x}))
    return found


def bench(
    bundle_ref: str,
    root: Path = Path("."),
    batch_sizes: tuple[int, ...] = (1, 256),
    seconds: float = 2.0,
    threads: int | None = None,
) -> BenchResult:
    """Time every runtime of a bundle at each batch size on random inputs of the model's shape."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise CnnpipeError("--batch-sizes must be positive integers")
    if seconds <= 0:
        raise CnnpipeError(f"--seconds must be positive, not {seconds}")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    bundle = Workspace(root).exports.resolve(bundle_ref)
    bundle.check()
    desc = bundle.read_json(MODEL_JSON)
    inp = desc["input"]
    shape = [inp["channels"], inp["height"], inp["width"]]
    runtimes = _runtimes(bundle, desc, threads)
    if not runtimes:
        raise CnnpipeError(f"{bundle.ref}: holds no format to time (needs onnx, torchscript, pt2 or safetensors)")
    result = BenchResult(bundle=bundle.ref, threads=threads, input_shape=shape)
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *shape), dtype=np.float32)
        for name, make_call in runtimes.items():
            times = time_calls(make_call(x), seconds)
            result.rows.append({
                "runtime": name, "batch": batch, "calls": len(times),
                "p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3),
                "images_per_s": float(batch / times.mean()),
            })
    return result
