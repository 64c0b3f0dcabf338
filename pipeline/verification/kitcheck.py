"""check.py of a cnnpipe verification kit: re-verify the kit's model files on the device they will run on.

Copied into every kit by ``cnnpipe kit``; it needs numpy, Pillow (for ``--preprocess``) and the
runtime of each format it checks (onnxruntime, ai-edge-litert, ncnn, MNN, OpenVINO), never torch
or cnnpipe. ``python check.py`` checks every file against ``kit.json``'s sha256, runs each format
whose runtime is importable on the kit's input tensors at batch 1 and at the whole set, compares
the logits with PyTorch's (``logits.npy``) within the format's tolerances, prints one row per
format, writes ``report.json`` and exits 0 (every format checked passed), 1 (a format failed, or
none could be checked) or 2 (bad usage).

``--preprocess module:function`` also checks the deployer's own preprocessing: the function takes
an image file's path and returns the model's input for it (float32, C×H×W or 1×C×H×W); each
image's result must equal cnnpipe's (``inputs.npy``) within ``--preprocess-atol``.
``--public-key PUB`` first checks the kit's signature (``kit.sig``, OpenSSF model-signing; needs
the model-signing package) and refuses a kit with any file changed, added or removed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
SIGNATURE = "kit.sig"
UNSIGNED = (SIGNATURE, "report.json", "__pycache__")  # the signature itself and what a check adds
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert", "ncnn": "ncnn", "mnn": "MNN",
                   "openvino": "openvino"}


class Refused(Exception):
    """The kit cannot be checked as asked: exit 2 (usage) or 1 (the kit fails), with one line."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- one runner per runtime: a function from the format's files to "batch -> logits" ----------


def onnxruntime_runner(files: list[Path], record: dict[str, Any], device: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    provider = {"cpu": ("CPUExecutionProvider", {}), "cuda": ("CUDAExecutionProvider", {"use_tf32": "0"})}[device]
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    session = ort.InferenceSession(str(files[0]), providers=[provider])
    if session.get_providers()[0] != provider[0]:
        raise RuntimeError(f"{provider[0]} was asked for but the session runs on {session.get_providers()[0]}")
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def litert_runner(files: list[Path], record: dict[str, Any], device: str) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(files[0]))
    entry, exit_ = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(entry, list(x.shape), strict=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(entry, np.ascontiguousarray(x))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(exit_))

    return run


def ncnn_runner(files: list[Path], record: dict[str, Any], device: str) -> Callable[[np.ndarray], np.ndarray]:
    import ncnn

    net = ncnn.Net()
    for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, name, False)
    if net.load_param(str(files[0])) != 0 or net.load_model(str(files[1])) != 0:
        raise RuntimeError("ncnn cannot load the files")
    (entry,), (exit_,) = net.input_names(), net.output_names()

    def run(x: np.ndarray) -> np.ndarray:
        rows = []
        for image in x:
            extractor = net.create_extractor()
            extractor.input(entry, ncnn.Mat(np.ascontiguousarray(image)).clone())
            status, out = extractor.extract(exit_)
            if status != 0:
                raise RuntimeError(f"ncnn's extraction failed ({status})")
            rows.append(np.array(out, dtype=np.float32).reshape(-1))
        return np.stack(rows)

    return run


def mnn_runner(files: list[Path], record: dict[str, Any], device: str) -> Callable[[np.ndarray], np.ndarray]:
    import MNN

    runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "precision": "high"},))
    module = MNN.nn.load_module_from_file(str(files[0]), ["input"], ["logits"], runtime_manager=runtime)
    if module is None:
        raise RuntimeError("MNN cannot load the file")
    expr = MNN.expr

    def run(x: np.ndarray) -> np.ndarray:
        out = module.forward([expr.const(np.ascontiguousarray(x), list(x.shape), expr.NCHW)])[0]
        return np.array(expr.convert(out, expr.NCHW).read(), dtype=np.float32).reshape(len(x), -1)

    return run


def openvino_runner(files: list[Path], record: dict[str, Any], device: str) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    precision = "bf16" if record.get("precision") == "bf16" else "f32"
    compiled = ov.Core().compile_model(str(files[0]), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    return lambda x: np.asarray(compiled([x])[0])


RUNNERS = {"onnxruntime": onnxruntime_runner, "litert": litert_runner, "ncnn": ncnn_runner, "mnn": mnn_runner,
           "openvino": openvino_runner}


# ---- the checks -------------------------------------------------------------------------------


def check_signature(kit: Path, public_key: Path) -> None:
    """Refuse unless kit.sig verifies with ``public_key`` over exactly the kit's files."""
    if importlib.util.find_spec("model_signing") is None:
        raise Refused("--public-key needs the model-signing package: pip install model-signing", 2)
    import model_signing

    if not (kit / SIGNATURE).is_file():
        raise Refused("the kit is not signed (no kit.sig)")
    try:
        config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
        hashing = model_signing.hashing.Config().set_ignored_paths(paths=list(UNSIGNED), ignore_git_paths=False)
        config.set_hashing_config(hashing).verify(kit, kit / SIGNATURE)
    except Exception as e:  # noqa: BLE001 - a changed, added or removed file, another key: refused
        raise Refused(f"the kit's signature does not verify with {public_key.name}: {str(e).splitlines()[0][:300]}") from None


def check_files(kit: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Each listed file whose sha256 is not kit.json's, by path, with why."""
    bad = {}
    for rel, digest in manifest["files"].items():
        path = kit / rel
        if not path.is_file():
            bad[rel] = "missing"
        elif sha256(path) != digest:
            bad[rel] = "changed (its sha256 is not kit.json's)"
    return bad


def judge(logits: np.ndarray, ref: np.ndarray, tolerance: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Whether logits pass the format's tolerance against PyTorch's, and the figures."""
    diff = np.abs(logits.astype(np.float64) - ref)
    agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
    figures = {"max_abs_diff": float(diff.max()), "top1_agreement": agreement}
    passed = agreement >= tolerance["min_agreement"]
    if tolerance.get("atol") is not None:
        within = diff <= tolerance["atol"] + tolerance["rtol"] * np.abs(ref)
        passed = passed and bool(within.all())
        if not within.all():
            image = int(np.argwhere(~within)[0][0])
            figures["first_beyond"] = image
    return passed, figures


def check_format(kit: Path, name: str, record: dict[str, Any], inputs: np.ndarray, ref: np.ndarray,
                 device: str, bad: dict[str, str]) -> dict[str, Any]:
    """One format's row: skipped (runtime not importable), failed (changed file, load or run error, breach) or passed."""
    row: dict[str, Any] = {"format": name, "runtime": record["runtime"], "device": device}
    if importlib.util.find_spec(RUNTIME_MODULES[record["runtime"]]) is None:
        return row | {"verdict": "skipped", "reason": f"{RUNTIME_MODULES[record['runtime']]} is not installed here"}
    changed = [f"{rel}: {bad[rel]}" for rel in record["files"] if rel in bad]
    if changed:
        return row | {"verdict": "FAIL", "reason": "; ".join(changed)}
    try:
        run = RUNNERS[record["runtime"]]([kit / rel for rel in record["files"]], record, device)
        limit = int(record.get("max_batch") or len(inputs))
        whole = np.concatenate([run(inputs[i:i + limit]) for i in range(0, len(inputs), limit)])
        single = np.concatenate([run(inputs[i:i + 1]) for i in range(len(inputs))])
    except Exception as e:  # noqa: BLE001 - whatever the runtime raises is the row's reason
        return row | {"verdict": "FAIL", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    passed, figures = True, {}
    for batch, logits in (("1", single), (str(min(limit, len(inputs))), whole)):
        ok, found = judge(logits, ref, record["tolerance"])
        figures[f"batch {batch}"] = found
        passed = passed and ok
    row |= {"verdict": "pass" if passed else "FAIL", "figures": figures}
    if not passed:
        worst = max(figures.values(), key=lambda f: f["max_abs_diff"])
        row["reason"] = (f"max abs diff {worst['max_abs_diff']:.3g} (atol {record['tolerance']['atol']}, rtol "
                         f"{record['tolerance']['rtol']}), top-1 agreement {worst['top1_agreement']:.4f}")
    return row


def check_preprocess(kit: Path, manifest: dict[str, Any], inputs: np.ndarray, spec: str, atol: float) -> dict[str, Any]:
    """The user's preprocessing function against the kit's input tensors, image by image."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise Refused(f"--preprocess {spec!r}: give module:function", 2)
    sys.path.insert(0, ".")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as e:
        raise Refused(f"--preprocess {spec}: cannot import it ({type(e).__name__}: {e})", 2) from None
    shape = tuple(inputs.shape[1:])
    for i, image in enumerate(manifest["images"]):
        try:
            got = np.asarray(function(str(kit / image["file"])), dtype=np.float32)
        except Exception as e:  # noqa: BLE001 - the user's code: its failure is the verdict
            return {"verdict": "FAIL", "image": image["file"], "reason": f"{spec} raised {type(e).__name__}: {e}"}
        if got.shape == (1, *shape):
            got = got[0]
        if got.shape != shape:
            return {"verdict": "FAIL", "image": image["file"],
                    "reason": f"{spec} returned shape {got.shape} for {image['file']}, not {shape} (C×H×W)"}
        diff = float(np.abs(got - inputs[i]).max())
        if not diff <= atol:
            return {"verdict": "FAIL", "image": image["file"], "max_abs_diff": diff,
                    "reason": f"{image['file']}: {spec} differs from cnnpipe's input by up to {diff:.4g} (atol {atol:g}); "
                              f"cnnpipe's preprocessing: {manifest['preprocessing']}"}
    return {"verdict": "pass", "images": len(manifest["images"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-verify this cnnpipe kit's model files here.")
    parser.add_argument("--format", action="append", help="Check only this format (repeatable).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="onnxruntime's provider.")
    parser.add_argument("--preprocess", metavar="MODULE:FUNCTION", help="Also check your preprocessing function.")
    parser.add_argument("--preprocess-atol", type=float, default=1e-4, help="Largest difference allowed per value.")
    parser.add_argument("--public-key", type=Path, help="Refuse the kit unless kit.sig verifies with this key.")
    parser.add_argument("--report", type=Path, default=HERE / "report.json", help="Where to write the JSON report.")
    args = parser.parse_args(argv)
    try:
        report = run_checks(args)
    except Refused as e:
        print(f"check.py: {e}", file=sys.stderr)
        return e.code
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'passed' if report['passed'] else 'FAILED'}; report {args.report}")
    return 0 if report["passed"] else 1


def run_checks(args: argparse.Namespace) -> dict[str, Any]:
    """Every check asked for; the report."""
    if args.public_key is not None:
        check_signature(HERE, args.public_key)
    manifest = json.loads((HERE / "kit.json").read_text())
    unknown = sorted(set(args.format or ()) - set(manifest["formats"]))
    if unknown:
        raise Refused(f"--format {unknown[0]}: not in this kit (it has {', '.join(manifest['formats'])})", 2)
    bad = check_files(HERE, manifest)
    inputs = np.load(HERE / "inputs.npy", allow_pickle=False)
    ref = np.load(HERE / "logits.npy", allow_pickle=False).astype(np.float64)
    rows = [check_format(HERE, name, record, inputs, ref, args.device, bad)
            for name, record in manifest["formats"].items() if not args.format or name in args.format]
    for row in rows:
        figures = max(row.get("figures", {}).values(), key=lambda f: f["max_abs_diff"], default={})
        print(f"{row['format']:<14} {row['runtime']:<12} {row['verdict']:<8} "
              f"max abs {figures.get('max_abs_diff', float('nan')):<10.3g} "
              f"agreement {figures.get('top1_agreement', float('nan')):<8.4f} {row.get('reason', '')}")
    checked = [r for r in rows if r["verdict"] != "skipped"]
    report: dict[str, Any] = {"bundle": manifest["bundle"], "images": len(inputs), "formats": rows,
                              "unlisted_changes": {k: v for k, v in bad.items()
                                                   if not any(k in r["files"] for r in manifest["formats"].values())}}
    if args.preprocess:
        found = report["preprocess"] = check_preprocess(HERE, manifest, inputs, args.preprocess, args.preprocess_atol)
        print(f"preprocess     {args.preprocess:<12} {found['verdict']:<8} {found.get('reason', '')}")
    report["passed"] = (bool(checked) and all(r["verdict"] == "pass" for r in checked) and not report["unlisted_changes"]
                        and report.get("preprocess", {}).get("verdict", "pass") == "pass")
    if not checked:
        print("no format of this kit has its runtime installed here: nothing was checked", file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(main())
