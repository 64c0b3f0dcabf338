"""Latency and throughput of a bundle in each runtime the format table lists, on each device here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..description import ModelDescription
from ..errors import CnnpipeError, FormatTimeout, first_line
from ..formats import FORMATS
from ..formats.base import Format, LoadContext, Runner
from ..nets.modelfile import MODEL_JSON
from ..options.commands import BenchOptions
from ..store.workspace import Workspace
from ..verification.signing import Trust
from ..verification.timelimit import Deadline, within

Call = Callable[[], Any]


@dataclass(frozen=True)
class BenchRow:
    """One runtime at one batch size: calls timed, p50/p99 seconds per call in ms, images/s."""

    runtime: str
    batch: int
    calls: int
    p50_ms: float
    p99_ms: float
    images_per_s: float


@dataclass
class BenchResult:
    """One row per runtime and batch size: p50/p99 latency of a call and images/s."""

    bundle: str
    threads: int
    input_shape: list[int]
    rows: list[BenchRow] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # runtime label -> why it could not be loaded or run

    @property
    def passed(self) -> bool:
        return not self.failed


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


def _load(spec: Format, path: Path, device: str, ctx: LoadContext, _: Deadline) -> Runner:
    return spec.open(path, device, ctx)


def _time(runner: Runner, x: np.ndarray, seconds: float, deadline: Deadline) -> np.ndarray:
    deadline.cancel = runner.cancel
    prepared = runner.prepare(x)
    return time_calls(lambda: runner.call(prepared), seconds)


def _runtimes(
    bundle: Any, bundle_json: dict[str, Any], threads: int, trust_code: bool, trust_native: bool,
    failed: dict[str, str], timeout: float,
) -> dict[str, Runner]:
    """Every format of the bundle on every device where it runs here, by bench label.

    A device other than the CPU that is absent, or where the runtime falls back to the CPU,
    is left out; a file that cannot be loaded on the CPU (within ``timeout``) goes into
    ``failed`` with the reason.
    """
    found: dict[str, Runner] = {}
    for fmt in bundle.results.get("formats", []):
        spec = FORMATS[fmt]
        ctx = LoadContext(
            meta=bundle_json.get("metadata", {}), variant=bundle_json.get("variants", {}).get(fmt, {}),
            desc=ModelDescription.from_json(bundle_json, f"{bundle.ref}: {MODEL_JSON}"), threads=threads,
            trust_code=trust_code, trust_native=trust_native,
        )
        for device in spec.devices:
            label = f"{spec.bench_label} ({device})"
            try:
                runner = within(timeout, label, partial(_load, spec, bundle.file(spec.file), device, ctx))
            except CnnpipeError as e:
                if device == "cpu":
                    failed[label] = str(e)
                continue
            if runner.fallback is None:
                found[label] = runner
    return found


def bench(
    bundle_ref: str, options: BenchOptions | None = None, root: Path = Path("."), *, trust_code: bool = False,
    trust: Trust | None = None,
) -> BenchResult:
    """Time every runtime of a bundle at each batch size on random inputs of the model's shape;
    a runtime that takes over ``options.timeout`` seconds to load, or for one batch size, fails its row."""
    options = options or BenchOptions()
    options.validate()
    batch_sizes, seconds, timeout = options.batch_size_list(), options.seconds, options.timeout
    threads = options.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    bundle = Workspace(root).exports.resolve(bundle_ref)
    trust_native = (trust or Trust()).admit(bundle)  # before anything of the bundle is read
    bundle.rehash()
    bundle_json = bundle.read_json(MODEL_JSON)
    shape = ModelDescription.from_json(bundle_json, f"{bundle.ref}: {MODEL_JSON}").input.shape
    result = BenchResult(bundle=bundle.ref, threads=threads, input_shape=shape)
    runtimes = _runtimes(bundle, bundle_json, threads, trust_code, trust_native, result.failed, timeout)
    if not runtimes and not result.failed:
        raise CnnpipeError(f"{bundle.ref}: holds no format to time")
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *shape), dtype=np.float32)
        for name, runner in runtimes.items():
            if name in result.failed:
                continue
            try:
                times = within(timeout, f"{name} at batch {batch}", partial(_time, runner, x, seconds))
            except FormatTimeout as e:
                result.failed[name] = str(e)
                continue
            except Exception as e:  # noqa: BLE001 - a file that loads but cannot run fails its row; the others are timed
                result.failed[name] = f"failed while running at batch {batch}: {type(e).__name__}: {first_line(e)}"
                continue
            result.rows.append(BenchRow(
                runtime=name, batch=batch, calls=len(times), p50_ms=float(np.percentile(times, 50) * 1e3),
                p99_ms=float(np.percentile(times, 99) * 1e3), images_per_s=float(batch / times.mean()),
            ))
    return result
