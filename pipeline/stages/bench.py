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

from ..description import MODEL_JSON, ModelDescription, read_bundle_json
from ..errors import CnnpipeError, FormatTimeout, first_line
from ..formats import FORMATS
from ..formats.base import Format, LoadContext, Runner
from ..options.commands import BenchOptions
from ..options.fields import check_batch_memory
from ..progress import step
from ..store.workspace import Workspace
from ..verification.reexport import unauthenticated
from ..verification.signing import Trust
from ..verification.timelimit import STOP_GRACE, Deadline, within
from ..verification.worker import Workers
from .proof import rederive, source_model

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
    format: str = ""


@dataclass
class BenchResult:
    """One row per runtime and batch size: p50/p99 latency of a call and images/s; by batch size, the
    fastest runtime among the formats fit to ship (``recommended``), and why a format is not (``not_recommended``)."""

    bundle: str
    threads: int
    input_shape: list[int]
    rows: list[BenchRow] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # runtime label -> why it could not be loaded or run
    recommended: dict[str, str] = field(default_factory=dict)  # batch size -> runtime label
    not_recommended: dict[str, str] = field(default_factory=dict)  # format -> why it is not considered

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


@dataclass(frozen=True)
class BenchJob:
    """One format on one device, timed in a worker at each batch size on inputs of ``shape``."""

    format: str
    path: Path
    device: str
    ctx: LoadContext
    shape: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    seconds: float
    timeout: float
    threads: int


@dataclass
class Timed:
    """What a bench worker answers: its rows and why it stopped, if it did (no row and no failure: the
    runtime fell back to the CPU from the device asked for, so it is not timed there)."""

    rows: list[BenchRow] = field(default_factory=list)
    failure: str | None = None


def _load(spec: Format, path: Path, device: str, ctx: LoadContext, _: Deadline) -> Runner:
    return spec.open(path, device, ctx)


def _time(runner: Runner, x: np.ndarray, seconds: float, deadline: Deadline) -> np.ndarray:
    deadline.cancel = runner.cancel
    prepared = runner.prepare(x)
    return time_calls(lambda: runner.call(prepared), seconds)


def time_format(job: BenchJob, label: str) -> Timed:
    """In a confined worker: load ``job``'s file within its time limit and time it at each batch size."""
    torch.set_num_threads(job.threads)
    spec = FORMATS[job.format]
    runner = within(job.timeout, label, partial(_load, spec, job.path, job.device, job.ctx))
    if runner.fallback is not None:
        return Timed()
    timed, rng = Timed(), np.random.default_rng(0)
    for batch in job.batch_sizes:
        x = rng.standard_normal((batch, *job.shape), dtype=np.float32)
        try:
            times = within(job.timeout, f"{label} at batch {batch}", partial(_time, runner, x, job.seconds))
        except FormatTimeout as e:
            timed.failure = str(e)
            break
        except Exception as e:  # noqa: BLE001 - a file that loads but cannot run fails its row; the others are timed
            timed.failure = f"failed while running at batch {batch}: {type(e).__name__}: {first_line(e)}"
            break
        timed.rows.append(BenchRow(
            runtime=label, batch=batch, calls=len(times), p50_ms=float(np.percentile(times, 50) * 1e3),
            p99_ms=float(np.percentile(times, 99) * 1e3), images_per_s=float(batch / times.mean()), format=job.format,
        ))
    return timed


def unqualified(bundle_json: dict[str, Any]) -> dict[str, str]:
    """The int8 formats of a bundle that are not shown to keep their accuracy limit: no record of the int8
    ladder choosing them and certifying them on the test split (a bundle exported before the ladder)."""
    found = {}
    for fmt, variant in bundle_json.get("variants", {}).items():
        report = bundle_json.get("quantization", {}).get(fmt)
        if variant.get("precision") == "int8" and not (isinstance(report, dict) and report.get("certified") is True
                                                        and isinstance(report.get("test"), dict)
                                                        and report["test"].get("passed") is True):
            found[fmt] = "int8 without a record that it kept its accuracy limit on the test split (export it again)"
    return found


def recommend(rows: list[BenchRow], excluded: dict[str, str]) -> dict[str, str]:
    """By batch size, the runtime with the most images/s among the formats not ``excluded``."""
    best: dict[int, BenchRow] = {}
    for row in rows:
        if row.format not in excluded and (row.batch not in best or row.images_per_s > best[row.batch].images_per_s):
            best[row.batch] = row
    return {str(b): best[b].runtime for b in sorted(best)}


def _unproven(ws: Workspace, bundle: Any, formats: list[str], trust_code: bool, workers: Workers) -> dict[str, str]:
    """The formats among ``formats`` that can run code and are not byte-identical to a re-export of the
    source model's weights, with the reason (bench has no signature to go by: see ``bench``)."""
    runs_code = [f for f in formats if FORMATS[f].runs_code]
    if not runs_code:
        return {}
    try:  # all of them: an earlier format's export adds to the metadata a later one embeds (the ONNX opset)
        found = rederive(ws, bundle, source_model(ws, bundle), formats, None, trust_code, workers).reexport
    except CnnpipeError as e:
        return {f: f"{unauthenticated(FORMATS[f])} (it cannot be exported again here: {e})" for f in runs_code}
    return {f: unauthenticated(FORMATS[f]) for f in runs_code if found.get(f) != []}


def bench(
    bundle_ref: str, options: BenchOptions | None = None, root: Path = Path("."), *, trust_code: bool = False,
    trust: Trust | None = None,
) -> BenchResult:
    """Time every runtime of a bundle at each batch size on random inputs of the model's shape, each
    format in a confined worker; a runtime that takes over ``options.timeout`` seconds to load, or for
    one batch size, fails its row. A format that can run code is timed only when the bundle's
    signature verified (``trust``) or the file is byte-identical to a re-export of the weights."""
    options = options or BenchOptions()
    options.validate()
    threads = options.threads or torch.get_num_threads()
    ws = Workspace(root)
    bundle = ws.exports.resolve(bundle_ref)
    trust_native = (trust or Trust()).admit(bundle)  # before anything of the bundle is read
    bundle.rehash()
    bundle_json = read_bundle_json(bundle)
    desc = ModelDescription.from_json(bundle_json, f"{bundle.ref}: {MODEL_JSON}")
    check_batch_memory(max(options.batch_size_list()), desc.input.shape, "--batch-sizes")
    result = BenchResult(bundle=bundle.ref, threads=threads, input_shape=desc.input.shape)
    formats = [f for f in bundle.results.get("formats", []) if f in FORMATS]
    if not formats:
        raise CnnpipeError(f"{bundle.ref}: holds no format to time")
    batches = options.batch_size_list()
    limit = options.timeout * (1 + len(batches)) + STOP_GRACE * 2  # the worker's own limits come first
    with Workers() as workers:
        refused = {} if trust_native else _unproven(ws, bundle, formats, trust_code, workers)
        for fmt in formats:
            spec = FORMATS[fmt]
            ctx = LoadContext(meta=bundle_json.get("metadata", {}), variant=bundle_json.get("variants", {}).get(fmt, {}),
                              desc=desc, threads=threads, trust_code=trust_code, trust_native=trust_native)
            for device in spec.devices:
                label = f"{spec.bench_label} ({device})"
                step(f"bench: {label}, batch sizes {', '.join(map(str, batches))}")
                if fmt in refused:
                    result.failed[label] = refused[fmt]
                    break
                try:
                    job = BenchJob(fmt, bundle.file(spec.file), device, ctx, tuple(desc.input.shape), tuple(batches),
                                   options.seconds, options.timeout, threads)
                    timed = workers.run(time_format, (job, label), limit, label, (bundle.path,))
                except CnnpipeError as e:
                    if device == "cpu":
                        result.failed[label] = str(e)
                    continue
                result.rows += timed.rows
                if timed.failure:
                    result.failed[label] = timed.failure
    result.rows.sort(key=lambda row: row.batch)
    result.not_recommended = unqualified(bundle_json)
    result.recommended = recommend(result.rows, result.not_recommended)
    return result
