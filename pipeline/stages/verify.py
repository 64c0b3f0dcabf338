"""Stage 5: reload every export from disk in its own runtime and prove parity with PyTorch.

Images stay uint8 on disk: each chunk of 256 is read through a fresh memory map (unmapped
again, so its pages leave this process) and normalized, so memory does not grow with the
number of images verified; only the logits (N × classes) are kept.
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnpipe.aoti import load_package
from cnnpipe.data.loading import load_dataset, normalize
from cnnpipe.errors import CnnpipeError, first_line
from cnnpipe.modelfile import MODEL_JSON, build_from, load_model, load_weights
from cnnpipe.onnx_session import PROVIDERS, onnx_session
from cnnpipe.stages.export import FILES, INPUT_NAME, check_onnx_graph
from cnnpipe.store import Version, Workspace

CHUNK = 256  # small activations: larger chunks let glibc's heap high-water creep up per chunk
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """When a format passes: every logit within ``atol + rtol·|reference|`` (``atol`` None: no
    bound on logits), top-1 agreement at least ``min_agreement``, and accuracy at most
    ``max_accuracy_drop`` points below PyTorch's (None: not checked)."""

    atol: float | None
    rtol: float
    min_agreement: float
    max_accuracy_drop: float | None


# By format (its dtype) and onnxruntime provider; the README lists them.
TOLERANCES = {
    "onnx": Tolerance(1e-4, 1e-4, 1.0, None),
    "onnx@cuda": Tolerance(1e-3, 1e-3, 1.0, None),
    "torchscript": Tolerance(1e-5, 1e-5, 1.0, None),
    "safetensors": Tolerance(1e-5, 1e-5, 1.0, None),
    "safetensors@cuda": Tolerance(1e-3, 1e-3, 1.0, None),  # cuDNN convolutions use TF32 by default
    "pt2": Tolerance(1e-5, 1e-5, 1.0, None),
    "pt2-aoti": Tolerance(1e-4, 1e-4, 1.0, None),
    "onnx-fp16": Tolerance(5e-2, 2e-2, 0.99, 1.0),
    "onnx-int8": Tolerance(None, 0.0, 0.95, 2.0),
}


def tolerance(fmt: str, provider: str | None = None, **overrides: float | None) -> Tolerance:
    """The default tolerance of ``fmt`` on ``provider``, with the options the user set."""
    base = TOLERANCES.get(f"{fmt}@{provider}", TOLERANCES[fmt])
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class FormatReport:
    """Parity of one format in one runtime against the PyTorch reference."""

    format: str
    runtime: str
    passed: bool
    reasons: list[str]
    tolerance: dict[str, float | None]
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    p99_abs_diff: float | None = None
    top1_agreement: float | None = None
    flipped: list[int] = field(default_factory=list)
    accuracy: float | None = None
    accuracy_delta_points: float | None = None
    per_class_accuracy: dict[str, float | None] = field(default_factory=dict)
    by_batch_size: dict[str, dict[str, float]] = field(default_factory=dict)
    providers: list[str] | None = None


@dataclass
class VerifyResult:
    """The verdict on a bundle and where its JSON report was written."""

    bundle: str
    model: str
    passed: bool
    report_path: str
    images: int
    batch_sizes: list[int]
    reference_accuracy: float
    reference_per_class_accuracy: dict[str, float | None]
    integrity: str
    formats: list[FormatReport] = field(default_factory=list)


def _diffs(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    rel = diff / np.maximum(np.abs(ref), 1e-3)
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(rel.max()),
        "p99_abs_diff": float(np.quantile(diff, 0.99)),
        "top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
    }


def _per_class(pred: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    return {
        c: float((pred[labels == i] == i).mean()) if (labels == i).any() else None for i, c in enumerate(classes)
    }


def _onnx_runner(path: Path, provider: str, meta: dict[str, str]) -> tuple[Runner, list[str], list[str]]:
    """A session on the ONNX file, after the graph check; raises CnnpipeError if it must not or cannot run."""
    check_onnx_graph(path)
    try:
        session = onnx_session(path, provider)
    except Exception as e:  # onnxruntime raises its own exception types for files it cannot load
        raise CnnpipeError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None
    used = session.get_providers()
    problems = []
    if used[0] != PROVIDERS[provider]:
        problems.append(f"{PROVIDERS[provider]} was asked for but the session runs on {used[0]}")
    if session.get_modelmeta().custom_metadata_map != meta:
        problems.append(f"{path.name}: ONNX metadata_props differ from the bundle's model.json")
    return (lambda x: session.run(None, {INPUT_NAME: x})[0]), used, problems


def _torch_runner(module: Any, device: str = "cpu") -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x).to(device)).cpu().numpy()

    return run


def _torchscript_runner(path: Path, meta: dict[str, str]) -> tuple[Runner, list[str]]:
    extra = {"cnnpipe.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still asked for
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    problems = [] if json.loads(extra["cnnpipe.json"] or "{}") == meta else ["TorchScript extra file differs from model.json"]
    return _torch_runner(module), problems


def _pt2_runner(path: Path, meta: dict[str, str]) -> tuple[Runner, list[str]]:
    extra = {"cnnpipe.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.load(str(path), extra_files=extra).module()
    problems = [] if json.loads(extra["cnnpipe.json"] or "{}") == meta else ["pt2 extra file differs from model.json"]
    return _torch_runner(module), problems


def _aoti_runner(path: Path, compiled_for: dict[str, str], meta: dict[str, str]) -> tuple[Runner, list[str]]:
    package, built = load_package(path, compiled_for)
    problems = [] if json.loads(built.get("cnnpipe.json") or "{}") == meta else ["AOTInductor metadata differs from model.json"]
    if built.get("AOTI_CPU_ISA", "").lower() != compiled_for.get("cpu_isa", ""):
        problems.append(f"{path.name} holds code for '{built.get('AOTI_CPU_ISA', '')}', model.json says "
                        f"'{compiled_for.get('cpu_isa', '')}'")
    return _torch_runner(package), problems


def _safetensors_runner(path: Path, desc: dict[str, Any], meta: dict[str, str], device: str) -> tuple[Runner, list[str]]:
    """A fresh network on ``device`` (cpu or cuda) with the bundle's safetensors weights."""
    from safetensors import safe_open

    if device == "cuda" and not torch.cuda.is_available():
        raise CnnpipeError("CUDA was asked for, but PyTorch sees no CUDA device here")
    model = build_from(desc)
    load_weights(model, path)
    model.eval().to(device)
    with safe_open(str(path), framework="pt") as f:
        problems = [] if f.metadata() == meta else ["safetensors __metadata__ differs from model.json"]
    return _torch_runner(model, device), problems


class Images:
    """The first ``count`` uint8 test images, normalized chunk by chunk into float32 NCHW."""

    def __init__(self, open_images: Callable[[], np.ndarray], count: int, mean: list[float], std: list[float]):
        self.open_images, self.count, self.mean, self.std = open_images, count, mean, std

    def __len__(self) -> int:
        return self.count

    def chunks(self, batch: int) -> Any:
        """(start, float32 chunk) pairs; a chunk is a whole number of batches."""
        size = max(batch, CHUNK // batch * batch)
        for start in range(0, self.count, size):
            mapped = self.open_images()
            raw = torch.from_numpy(np.array(mapped[start : min(start + size, self.count)]))
            del mapped  # unmap: the pages read so far no longer count against this process
            yield start, normalize(raw, self.mean, self.std).numpy()

    def logits(self, runner: Runner, batch: int) -> np.ndarray:
        out = []
        for _, x in self.chunks(batch):
            out += [runner(x[i : i + batch]) for i in range(0, len(x), batch)]
        return np.concatenate(out)


def check_format(
    name: str, runtime: str, runner: Runner, images: Images, ref: np.ndarray, labels: np.ndarray,
    classes: list[str], batch_sizes: list[int], tol: Tolerance, problems: list[str],
) -> FormatReport:
    """Run ``runner`` at every batch size and judge it against the reference logits."""
    outputs, by_batch, reasons = {}, {}, list(problems)
    ref_accuracy = float((ref.argmax(1) == labels).mean())
    bound = None if tol.atol is None else tol.atol + tol.rtol * np.abs(ref.astype(np.float64))
    for b in batch_sizes:
        out = images.logits(runner, b)
        if out.shape != ref.shape:
            raise CnnpipeError(f"{name}: output shape {out.shape} at batch {b}, expected {ref.shape}")
        outputs[b] = out
        d = by_batch[str(b)] = _diffs(out, ref)
        excess = None if bound is None else np.abs(out.astype(np.float64) - ref) - bound
        if excess is not None and not excess.max() <= 0:  # NaN fails too
            where = np.unravel_index(np.nanargmax(excess), excess.shape)
            reasons.append(
                f"logits beyond atol {tol.atol:g} + rtol {tol.rtol:g}·|ref| at batch {b}: image {where[0]} "
                f"differs by {abs(out[where] - ref[where]):.3g} on a logit of {ref[where]:.3g}"
            )
        if d["top1_agreement"] < tol.min_agreement:
            reasons.append(f"top-1 agreement {d['top1_agreement']:.4f} < {tol.min_agreement} at batch {b}")
    worst = max(outputs, key=lambda b: by_batch[str(b)]["max_abs_diff"])
    pred = outputs[worst].argmax(1)
    accuracy = float((pred == labels).mean())
    delta = round(100 * (accuracy - ref_accuracy), 4)
    if tol.max_accuracy_drop is not None and -delta > tol.max_accuracy_drop:
        reasons.append(f"accuracy {accuracy:.4f} is {-delta:.2f} points below PyTorch's (limit {tol.max_accuracy_drop:g})")
    flipped = sorted({int(i) for out in outputs.values() for i in np.flatnonzero(out.argmax(1) != ref.argmax(1))})
    return FormatReport(
        format=name, runtime=runtime, passed=not reasons, reasons=reasons, tolerance=asdict(tol),
        flipped=flipped[:100], accuracy=accuracy, accuracy_delta_points=delta,
        per_class_accuracy=_per_class(pred, labels, classes), by_batch_size=by_batch, **_diffs(outputs[worst], ref),
    )


def _source_model(ws: Workspace, bundle: Version) -> Version:
    parents = bundle.manifest.get("lineage", {}).get("parents", [])
    if not parents:
        raise CnnpipeError(f"{bundle.ref}: the manifest names no source model")
    source = ws.models.resolve(parents[0]["ref"])
    if source.manifest_sha256 != parents[0]["manifest_sha256"]:
        raise CnnpipeError(f"{source.ref}: its manifest changed since {bundle.ref} was exported from it")
    return source


def _check_triton(bundle: Version, desc: dict[str, Any]) -> list[str]:
    """The Triton copy of the ONNX file is the verified one, and its config matches the model."""
    files = desc.get("triton", [])
    if not files:
        return []
    config_rel, model_rel = files
    problems = []
    if bundle.file(model_rel).read_bytes() != bundle.file(FILES["onnx"]).read_bytes():
        problems.append(f"{model_rel} is not the verified model.onnx")
    config = bundle.file(config_rel).read_text()
    inp = desc["input"]
    dims = [int(d) for d in re.findall(r"-?\d+", "".join(re.findall(r"dims: \[([^\]]*)\]", config)))]
    if dims != [inp["channels"], inp["height"], inp["width"], len(desc["classes"])]:
        problems.append(f"{config_rel}: dims {dims} do not match the model's input and classes")
    return problems


def _check_options(batch_sizes: tuple[int, ...], samples: int, providers: tuple[str, ...]) -> None:
    if not batch_sizes or min(batch_sizes) < 1:
        raise CnnpipeError("--batch-sizes must be positive integers")
    if samples < 1:
        raise CnnpipeError(f"--samples must be at least 1, not {samples}")
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown or not providers:
        raise CnnpipeError(f"unknown provider {(unknown or [''])[0]!r}; use {', '.join(PROVIDERS)}")


def verify(
    bundle_ref: str,
    root: Path = Path("."),
    batch_sizes: tuple[int, ...] = (1, 2, 7, 64),
    samples: int | None = 512,
    atol: float | None = None,
    min_agreement: float | None = None,
    providers: tuple[str, ...] = ("cpu",),
    rtol: float | None = None,
) -> VerifyResult:
    """Check a bundle's hashes, then each format's logits against the PyTorch reference.

    ``samples`` real test images are used (None: the whole test split); ``atol``, ``rtol``
    and ``min_agreement`` override every format's default tolerance.
    """
    _check_options(batch_sizes, 1 if samples is None else samples, providers)
    ws = Workspace(root)
    bundle = ws.exports.resolve(bundle_ref)
    try:
        bundle.check()
        integrity = "ok"
    except CnnpipeError as e:
        integrity = str(e)
    source = _source_model(ws, bundle)
    model, source_desc = load_model(source)
    dataset = load_dataset(ws.data.resolve(source_desc["dataset"]["ref"]))
    labels = dataset.arrays("test", mmap=True)[1][:samples]
    desc = bundle.read_json(MODEL_JSON) if integrity == "ok" else source_desc
    meta = desc.get("metadata", {})
    classes = source_desc["classes"]
    images = Images(
        lambda: dataset.arrays("test", mmap=True)[0], len(labels), source_desc["input"]["mean"], source_desc["input"]["std"]
    )
    ref = images.logits(_torch_runner(model), CHUNK)
    result = VerifyResult(
        bundle=bundle.ref, model=source.ref, passed=integrity == "ok", report_path="",
        images=len(images), batch_sizes=list(batch_sizes),
        reference_accuracy=float((ref.argmax(1) == labels).mean()),
        reference_per_class_accuracy=_per_class(ref.argmax(1), labels, classes), integrity=integrity,
    )
    if integrity == "ok":
        if any(desc.get(k) != source_desc.get(k) for k in ("arch", "classes", "input")):
            result.passed = False
            result.integrity = "the bundle's model.json does not describe its source model"
        triton = _check_triton(bundle, desc)
        if triton:
            result.passed = False
            result.integrity = "; ".join(triton)
        overrides = {"atol": atol, "rtol": rtol, "min_agreement": min_agreement}
        judge = dict(images=images, ref=ref, labels=labels, classes=classes, batch_sizes=list(batch_sizes))
        for fmt in bundle.results.get("formats", []):
            path = bundle.file(FILES[fmt])
            if fmt.startswith("onnx"):
                variant_meta = meta | desc.get("variants", {}).get(fmt, {})
                for provider in providers:
                    tol, runtime = tolerance(fmt, provider, **overrides), f"onnxruntime[{provider}]"
                    try:
                        runner, used, problems = _onnx_runner(path, provider, variant_meta)
                    except CnnpipeError as e:  # not run at all: the format fails with the reason
                        result.formats.append(FormatReport(fmt, runtime, False, [str(e)], asdict(tol)))
                        continue
                    report = check_format(fmt, runtime, runner, **judge, tol=tol, problems=problems)
                    report.providers = used
                    result.formats.append(report)
                continue
            if fmt == "torchscript":
                runner, problems = _torchscript_runner(path, meta)
                runtime = "torch.jit"
            elif fmt == "pt2":
                runner, problems = _pt2_runner(path, meta)
                runtime = "torch.export"
            elif fmt == "pt2-aoti":
                runtime = "AOTInductor"
                try:
                    runner, problems = _aoti_runner(path, desc["variants"][fmt]["compiled_for"], meta)
                except CnnpipeError as e:  # not run at all: the format fails with the reason
                    result.formats.append(FormatReport(fmt, runtime, False, [str(e)], asdict(tolerance(fmt, **overrides))))
                    continue
            else:
                for device in providers:  # the network rebuilt from the weights, on each device asked for
                    tol, runtime = tolerance(fmt, device, **overrides), f"torch (fresh model)[{device}]"
                    try:
                        runner, problems = _safetensors_runner(path, desc, meta, device)
                    except CnnpipeError as e:
                        result.formats.append(FormatReport(fmt, runtime, False, [str(e)], asdict(tol)))
                        continue
                    result.formats.append(check_format(fmt, runtime, runner, **judge, tol=tol, problems=problems))
                continue
            result.formats.append(
                check_format(fmt, runtime, runner, **judge, tol=tolerance(fmt, **overrides), problems=problems)
            )
        result.passed = result.passed and bool(result.formats) and all(r.passed for r in result.formats)
    _write_report(bundle, result)
    return result


def _write_report(bundle: Version, result: VerifyResult) -> None:
    """Write the JSON report under ``verify/``, named by time, host and process (never overwritten)."""
    folder = bundle.path / "verify"
    folder.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40]
    path = folder / f"{stamp}-{host}-{os.getpid()}.json"
    tmp = folder / f".{path.name}.tmp"
    result.report_path = str(path)
    tmp.write_text(json.dumps(asdict(result), indent=2) + "\n")
    os.replace(tmp, path)
