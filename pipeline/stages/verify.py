"""Stage 5: reload every export from disk in its own runtime and prove parity with PyTorch."""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnpipe.data.loading import load_dataset, normalize
from cnnpipe.errors import CnnpipeError
from cnnpipe.modelfile import MODEL_JSON, build_from, load_model, load_weights
from cnnpipe.stages.export import FILES, INPUT_NAME
from cnnpipe.store import Version, Workspace

DEFAULT_ATOL = {"onnx": 1e-4, "torchscript": 1e-5, "safetensors": 1e-5}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class FormatReport:
    """Parity of one format in one runtime against the PyTorch reference."""

    format: str
    runtime: str
    passed: bool
    reasons: list[str]
    atol: float
    max_abs_diff: float
    max_rel_diff: float
    p99_abs_diff: float
    top1_agreement: float
    flipped: list[int]
    accuracy: float
    by_batch_size: dict[str, dict[str, float]]
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


def _onnx_runner(path: Path, provider: str, meta: dict[str, str]) -> tuple[Runner, list[str], list[str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=[PROVIDERS[provider]])
    used = session.get_providers()
    problems = []
    if used[0] != PROVIDERS[provider]:
        problems.append(f"{PROVIDERS[provider]} was asked for but the session runs on {used[0]}")
    if session.get_modelmeta().custom_metadata_map != meta:
        problems.append("ONNX metadata_props differ from the bundle's model.json")
    return (lambda x: session.run(None, {INPUT_NAME: x})[0]), used, problems


def _torchscript_runner(path: Path, meta: dict[str, str]) -> tuple[Runner, list[str]]:
    extra = {"cnnpipe.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still asked for
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    problems = [] if json.loads(extra["cnnpipe.json"] or "{}") == meta else ["TorchScript extra file differs from model.json"]

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run, problems


def _safetensors_runner(path: Path, desc: dict[str, Any], meta: dict[str, str]) -> tuple[Runner, list[str]]:
    from safetensors import safe_open

    model = build_from(desc)
    load_weights(model, path)
    model.eval()
    with safe_open(str(path), framework="pt") as f:
        problems = [] if f.metadata() == meta else ["safetensors __metadata__ differs from model.json"]

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run, problems


def _check_format(
    name: str, runtime: str, runner: Runner, x: np.ndarray, ref: np.ndarray, labels: np.ndarray,
    batch_sizes: list[int], atol: float, min_agreement: float, problems: list[str],
) -> FormatReport:
    outputs = {}
    by_batch = {}
    for b in batch_sizes:
        out = np.concatenate([runner(x[i : i + b]) for i in range(0, len(x), b)])
        if out.shape != ref.shape:
            raise CnnpipeError(f"{name}: output shape {out.shape} at batch {b}, expected {ref.shape}")
        outputs[b] = out
        by_batch[str(b)] = _diffs(out, ref)
    worst = max(outputs, key=lambda b: by_batch[str(b)]["max_abs_diff"])
    overall = _diffs(outputs[worst], ref)
    flipped = sorted({int(i) for out in outputs.values() for i in np.flatnonzero(out.argmax(1) != ref.argmax(1))})
    reasons = list(problems)
    for b, d in by_batch.items():
        if not d["max_abs_diff"] <= atol:
            reasons.append(f"max abs diff {d['max_abs_diff']:.3g} > atol {atol:g} at batch {b}")
        if d["top1_agreement"] < min_agreement:
            reasons.append(f"top-1 agreement {d['top1_agreement']:.4f} < {min_agreement} at batch {b}")
    return FormatReport(
        format=name, runtime=runtime, passed=not reasons, reasons=reasons, atol=atol,
        flipped=flipped[:100], accuracy=float((outputs[worst].argmax(1) == labels).mean()),
        by_batch_size=by_batch, **overall,
    )


def _source_model(ws: Workspace, bundle: Version) -> Version:
    parents = bundle.manifest.get("lineage", {}).get("parents", [])
    if not parents:
        raise CnnpipeError(f"{bundle.ref}: the manifest names no source model")
    source = ws.models.resolve(parents[0]["ref"])
    if source.manifest_sha256 != parents[0]["manifest_sha256"]:
        raise CnnpipeError(f"{source.ref}: its manifest changed since {bundle.ref} was exported from it")
    return source


def verify(
    bundle_ref: str,
    root: Path = Path("."),
    batch_sizes: tuple[int, ...] = (1, 7, 64),
    samples: int = 512,
    atol: float | None = None,
    min_agreement: float = 1.0,
    providers: tuple[str, ...] = ("cpu",),
) -> VerifyResult:
    """Check a bundle's hashes, then each format's logits against the PyTorch reference."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise CnnpipeError("--batch-sizes must be positive integers")
    if samples < 1:
        raise CnnpipeError(f"--samples must be at least 1, not {samples}")
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown:
        raise CnnpipeError(f"unknown provider {unknown[0]!r}; use {', '.join(PROVIDERS)}")
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
    images, labels = dataset.split("test")
    images, labels = images[:samples], labels[:samples].numpy()
    desc = bundle.read_json(MODEL_JSON) if integrity == "ok" else source_desc
    meta = desc.get("metadata", {})
    inp = desc["input"]
    x = normalize(images, inp["mean"], inp["std"]).numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    result = VerifyResult(
        bundle=bundle.ref, model=source.ref, passed=integrity == "ok", report_path="",
        images=len(x), batch_sizes=list(batch_sizes),
        reference_accuracy=float((ref.argmax(1) == labels).mean()), integrity=integrity,
    )
    if integrity == "ok":
        formats = bundle.results.get("formats", [])
        if any(desc.get(k) != source_desc.get(k) for k in ("arch", "classes", "input")):
            result.passed = False
            result.integrity = "the bundle's model.json does not describe its source model"
        for fmt in formats:
            path = bundle.file(FILES[fmt])
            tol = atol if atol is not None else DEFAULT_ATOL[fmt]
            if fmt == "onnx":
                for provider in providers:
                    runner, used, problems = _onnx_runner(path, provider, meta)
                    report = _check_format(
                        fmt, f"onnxruntime[{provider}]", runner, x, ref, labels, list(batch_sizes), tol,
                        min_agreement, problems,
                    )
                    report.providers = used
                    result.formats.append(report)
                continue
            if fmt == "torchscript":
                runner, problems = _torchscript_runner(path, meta)
                runtime = "torch.jit"
            else:
                runner, problems = _safetensors_runner(path, desc, meta)
                runtime = "torch (fresh model)"
            result.formats.append(
                _check_format(fmt, runtime, runner, x, ref, labels, list(batch_sizes), tol, min_agreement, problems)
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
