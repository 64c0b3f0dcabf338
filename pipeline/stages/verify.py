"""Stage 5: reload every export from disk in its own runtime and prove parity with PyTorch.

Images stay uint8 on disk: each chunk of 256 is read through a fresh memory map (unmapped
again, so its pages leave this process) and normalized, so memory does not grow with the
number of images verified; only the logits (N × classes) are kept.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..data.loading import load_dataset, split_files
from ..description import MODEL_JSON, ModelDescription, bundle_problem, read_description
from ..errors import CnnpipeError, RollbackWarning, first_line
from ..formats import FORMATS
from ..formats.base import Format, LoadContext, Tolerance
from ..fs import dumps
from ..options.fields import check_batch_memory
from ..options.release import VerifyOptions
from ..progress import step
from ..store.additions import add_report, report_path
from ..store.provenance import environment
from ..store.version import Version
from ..store.workspace import Workspace
from ..verification.consistency import check_bundle_records
from ..verification.parity import FormatReport, check_format, per_class
from ..verification.reexport import unauthenticated
from ..verification.signing import Trust
from ..verification.statement import check_statements, cpu_flags, write_statement
from ..verification.worker import Images, Job, Workers, run_format
from .bundle_card import check_card
from .proof import Rebuilt, rederive, reference_layers, source_model

ENVIRONMENT_KEYS = ("cnnpipe_version", "torch_version")  # metadata naming the exporting tools, not the model
LOCALIZE_IMAGES = 16  # images a failed ONNX file is compared on, layer by layer
LAYER_LIMIT = 0.1  # relative departure that marks a layer of a format with no logit bound (int8)


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
    reexport: dict[str, list[str]] = field(default_factory=dict)  # format -> how it differs from a re-export
    dataset_hash: str = ""
    quantization: dict[str, Any] = field(default_factory=dict)  # what export's int8 ladder says it chose (model.json)
    statement: str | None = None  # the signed statement written (with a signing key)
    statements: list[dict[str, Any]] = field(default_factory=list)  # with --public-key: each statement found, checked


def _verify_format(
    spec: Format, bundle: Version, device: str, ctx: LoadContext, overrides: dict[str, float | None], judge: dict[str, Any],
    source: Version, timeout: float, workers: Workers,
) -> FormatReport:
    """Load and run one format on one device in a worker and judge its answers; a file that cannot be
    loaded or run, a worker that dies, or one that does not finish within ``timeout`` seconds fails with the reason."""
    tol, runtime = spec.tolerance(device, **overrides), spec.runtime_on(device)
    images: Images = judge["images"]
    what = f"{spec.name} on {device}"
    try:
        path = bundle.file(spec.file)  # a format whose file the manifest does not list fails here
        job = Job(spec.name, path, device, ctx, images, tuple(judge["batch_sizes"]))
        answers = workers.run(run_format, (job,), timeout, what, (bundle.path, images.path))
        report = check_format(spec.name, runtime, answers.logits, judge["ref"], judge["labels"], judge["classes"], tol,
                              answers.problems, judge["gate_on"])
    except (CnnpipeError, OSError) as e:
        return FormatReport(spec.name, runtime, False, [str(e)], asdict(tol))
    report.providers, report.sandbox = answers.providers, workers.confinement
    if not report.passed and spec.onnx_graph:
        report.localization = _localize(replace(job, intermediates=_first(images)), source, tol, workers, timeout)
        _explain(report)
    return report


def _unauthenticated(spec: Format, device: str, overrides: dict[str, float | None]) -> FormatReport:
    """The failed row of a format that can run code and was not proven: it is not loaded."""
    return FormatReport(spec.name, spec.runtime_on(device), False, [unauthenticated(spec)],
                        asdict(spec.tolerance(device, **overrides)))


def _first(images: Images) -> np.ndarray:
    _, x = next(images.chunks(LOCALIZE_IMAGES))
    return x[:LOCALIZE_IMAGES]


def _explain(report: FormatReport) -> None:
    """The localization's finding as a reason of a failed ONNX format."""
    first, layers = report.localization.get("first_divergent"), report.localization.get("layers")
    if first:
        report.reasons.append(f"first layer that departs from PyTorch: {first['layer']} ({first['module']}, "
                              f"ONNX node {first['onnx_node']}): max abs diff {first['max_abs_diff']:.3g} on "
                              f"activations up to {first['max_abs_activation']:.3g}")
    elif layers:
        worst = max(layers, key=lambda row: row["relative"] or 0.0)
        report.reasons.append(f"no layer departs by more than {report.localization['limit']:g} of its activations; "
                              f"the largest relative error is {worst['relative']:.3g} in {worst['layer']} "
                              f"({worst['module']})")


def _localize(job: Job, source: Version, tol: Tolerance, workers: Workers, timeout: float) -> dict[str, Any]:
    """Layer-by-layer comparison of a failed ONNX file on the first LOCALIZE_IMAGES images (its
    intermediate tensors computed in a confined worker, the reference's in a worker of its own)."""
    limit = LAYER_LIMIT if tol.atol is None else max(10 * tol.rtol, 1e-3)
    try:
        found = workers.run(run_format, (job,), timeout, f"{job.format}'s layers", (job.path.parent,)).intermediates
        return workers.run(reference_layers, (source, found, job.intermediates, limit, job.ctx.trust_code), timeout,
                           f"{source.ref}'s layers", None)
    except Exception as e:  # noqa: BLE001 - the verdict stands; only the diagnosis is missing
        return {"error": f"could not compare layers: {type(e).__name__}: {first_line(e)}"}


def _check_triton(bundle: Version, files: list[str], desc: ModelDescription) -> list[str]:
    """The Triton copy of the ONNX file is the verified one, and its config matches the model."""
    if not files:
        return []
    config_rel, model_rel = files
    problems = []
    if bundle.file(model_rel).read_bytes() != bundle.file(FORMATS["onnx"].file).read_bytes():
        problems.append(f"{model_rel} is not the verified model.onnx")
    config = bundle.file(config_rel).read_text()
    dims = [int(d) for d in re.findall(r"-?\d+", "".join(re.findall(r"dims: \[([^\]]*)\]", config)))]
    if dims != [*desc.input.shape, len(desc.classes)]:
        problems.append(f"{config_rel}: dims {dims} do not match the model's input and classes")
    return problems


def verify(
    bundle_ref: str, options: VerifyOptions | None = None, root: Path = Path("."), *, trust_code: bool = False,
    trust: Trust | None = None, sign_key: Path | None = None,
) -> VerifyResult:
    """Check a bundle's signature (where ``trust`` gives a key), its hashes and records, then each
    format's logits against the PyTorch reference.

    ``options`` (``VerifyOptions``) sets the batch sizes, the number of real test images
    (or the whole split with ``full``), the devices, and tolerances that override every
    format's default. A format holding native code is loaded only when ``trust`` allows it.
    With ``sign_key`` the verdict is also written as a signed in-toto statement; with a public
    key in ``trust``, the statements already there are checked and listed.
    """
    options = options or VerifyOptions()
    options.validate()
    samples = None if options.full else options.samples
    ws = Workspace(root)
    bundle = _resolve(ws, bundle_ref, trust or Trust())
    with Workers() as workers:  # its fork server starts now, alongside the checks below
        trust_native = (trust or Trust()).admit(bundle)  # before anything of the bundle is read
        integrity = _intact(bundle)
        source = source_model(ws, bundle)
        source.rehash()
        source_desc = _described(source, options)
        dataset = load_dataset(ws.data.resolve(source_desc.dataset_ref))
        labels = dataset.arrays("test", mmap=True)[1][:samples]
        integrity, bundle_json, desc = _bundle_json(bundle, source_desc, integrity)
        images = Images(dataset.version.file(split_files("test")[0]), len(labels), tuple(source_desc.input.mean),
                        tuple(source_desc.input.std))
        formats, problems = _records(bundle, bundle_json, desc, source, source_desc) if integrity == "ok" else ([], [])
        rebuilt = rederive(ws, bundle, source, formats, images, trust_code, workers, settle=False,
                           card=(source_desc, bundle_json) if integrity == "ok" else None)
        assert rebuilt.logits is not None
        problems += _made_again(bundle, bundle_json, source, rebuilt) if integrity == "ok" else []
        ref, classes = rebuilt.logits, list(source_desc.classes)
        result = VerifyResult(
            bundle=bundle.ref, model=source.ref, passed=integrity == "ok" and not problems, report_path="",
            images=len(images), batch_sizes=list(options.batch_size_list()),
            reference_accuracy=float((ref.argmax(1) == labels).mean()),
            reference_per_class_accuracy=per_class(ref.argmax(1), labels, classes),
            integrity="; ".join(problems) or integrity, reexport=rebuilt.reexport, dataset_hash=dataset.dataset_hash,
        )
        if integrity == "ok":
            ctx = LoadContext(meta=bundle_json.get("metadata", {}), variant={}, desc=desc, trust_code=trust_code,
                              trust_native=trust_native)
            judge = dict(images=images, ref=ref, labels=labels, classes=classes, batch_sizes=result.batch_sizes,
                         gate_on=options.gate_on)
            result.quantization = bundle_json.get("quantization", {})
            _judge_formats(bundle, bundle_json, formats, source, judge, options, result, ctx, workers)
        result.reexport = rebuilt.settle()  # the slow re-exports ran alongside the formats' workers
        _mark_differences(result)
    _write_report(bundle, result)
    if sign_key is not None:
        result.statement = str(write_statement(bundle, _predicate(bundle, result, rebuilt.runtime), sign_key))
    if trust is not None and trust.public_key is not None:
        result.statements = check_statements(bundle, trust.public_key)
    return result


def _intact(bundle: Version) -> str:
    """``"ok"`` when every file of the bundle matches its manifest, else what does not."""
    try:
        bundle.rehash()
        return "ok"
    except CnnpipeError as e:
        return str(e)


def _bundle_json(bundle: Version, source_desc: ModelDescription,
                 integrity: str) -> tuple[str, dict[str, Any], ModelDescription]:
    """``("ok", model.json, its description)`` when the bundle is intact and its ``model.json`` has the shapes
    verify reads, else what is wrong and the source model's description in its place (the verdict then fails)."""
    if integrity != "ok":
        return integrity, source_desc.to_json(), source_desc
    data = bundle.read_json(MODEL_JSON)
    problem = bundle_problem(data)
    if problem is None:
        try:
            return "ok", data, ModelDescription.from_json(data, f"{bundle.ref}: {MODEL_JSON}")
        except CnnpipeError as e:
            return str(e), source_desc.to_json(), source_desc
    return f"{bundle.ref}: {MODEL_JSON}: {problem}", source_desc.to_json(), source_desc


def _described(source: Version, options: VerifyOptions) -> ModelDescription:
    """The source model's description, once the largest batch asked for is known to fit in memory."""
    desc = read_description(source)
    largest = max(options.batch_size_list())  # a batch holds at most the images verified
    check_batch_memory(largest if options.full else min(largest, options.samples), desc.input.shape, "--batch-sizes")
    return desc


def _resolve(ws: Workspace, ref: str, trust: Trust) -> Version:
    """The bundle ``ref`` names; a ``latest`` moved back fails when a signature is required."""
    with warnings.catch_warnings():
        if trust.require_signature:
            warnings.simplefilter("error", RollbackWarning)
        try:
            return ws.exports.resolve(ref)
        except RollbackWarning as w:
            raise CnnpipeError(f"{w} (--require-signature refuses a latest that was moved back)") from None


def _predicate(bundle: Version, result: VerifyResult, runtime: dict[str, str | None]) -> dict[str, Any]:
    """What a signed statement says about the bundle: the verdict and how it was reached (``runtime``: the
    torch, CUDA and device of the worker that ran the reference network; verify's own process imports no torch)."""
    verdict = {k: v for k, v in asdict(result).items() if k not in ("report_path", "statement", "statements")}
    packages = tuple(dict.fromkeys(p for f in result.formats for p in FORMATS[f.format].packages))
    return verdict | {"version": bundle.number, "environment": environment(packages) | runtime, "cpu_flags": cpu_flags(),
                      "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _records(bundle: Version, bundle_json: dict[str, Any], desc: ModelDescription, source: Version,
             source_desc: ModelDescription) -> tuple[list[str], list[str]]:
    """The formats an intact bundle's records list, and what is wrong with its records."""
    problems = _check_triton(bundle, bundle_json.get("triton", []), desc)
    if (desc.arch, desc.classes, desc.input) != (source_desc.arch, source_desc.classes, source_desc.input):
        problems.insert(0, "the bundle's model.json does not describe its source model")
    formats, disagreements = check_bundle_records(bundle, bundle_json)
    return formats, problems + disagreements


def _made_again(bundle: Version, bundle_json: dict[str, Any], source: Version, rebuilt: Rebuilt) -> list[str]:
    """How the card and ``model.json``'s metadata differ from what the reference worker made again."""
    return check_card(bundle, source, rebuilt.card) + _check_metadata(bundle_json, rebuilt.metadata, source)


def _check_metadata(bundle_json: dict[str, Any], expected: dict[str, str], source: Version) -> list[str]:
    """How ``model.json``'s metadata differs from what the re-exports from the source model embedded
    (classes and their order, mean, std, input shape, weights, opset); the exporting tools' versions may differ."""
    shipped = bundle_json.get("metadata")
    if not isinstance(shipped, dict):
        return [f"{MODEL_JSON}: metadata is missing"]
    changed = sorted(k for k in expected.keys() | shipped.keys()
                     if k not in ENVIRONMENT_KEYS and shipped.get(k) != expected.get(k))
    return [f"{MODEL_JSON}: metadata {', '.join(changed)} differ from what export makes from {source.ref}"] if changed else []


def _judge_formats(bundle: Version, bundle_json: dict[str, Any], formats: list[str], source: Version,
                   judge: dict[str, Any], options: VerifyOptions, result: VerifyResult, base: LoadContext,
                   workers: Workers) -> None:
    """Every format's answers on every device asked for, into ``result``: a format that can run code is
    loaded only when it is byte-identical to a re-export or its bundle's signature was verified."""
    for i, fmt in enumerate(formats, 1):
        spec = FORMATS[fmt]
        ctx = replace(base, variant=bundle_json.get("variants", {}).get(fmt, {}))
        proven = result.reexport.get(fmt) == [] or base.trust_native
        for device in [d for d in options.provider_list() if d in spec.devices] or ["cpu"]:
            step(f"verify: {fmt} on {device} ({i}/{len(formats)}), batch sizes {', '.join(map(str, result.batch_sizes))}")
            result.formats.append(_unauthenticated(spec, device, options.overrides(fmt)) if spec.runs_code and not proven
                                  else _verify_format(spec, bundle, device, ctx, options.overrides(fmt), judge, source,
                                                      options.timeout, workers))


def _mark_differences(result: VerifyResult) -> None:
    """Fail each format that differs from its re-export, and the verdict with it."""
    for report in result.formats:
        if result.reexport.get(report.format):
            report.passed = False
            report.reasons.append("differs from a re-export of the weights: " + "; ".join(result.reexport[report.format]))
    result.passed = result.passed and bool(result.formats) and all(r.passed for r in result.formats)


def _write_report(bundle: Version, result: VerifyResult) -> None:
    """Write the JSON report under ``verify/``, named by time, host and process (never overwritten)."""
    path = report_path(bundle, ".json")
    result.report_path = str(path)
    add_report(path, dumps(asdict(result), indent=2) + "\n")
