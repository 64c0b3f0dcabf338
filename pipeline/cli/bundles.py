"""Commands that use a bundle: predict, bench, kit, keygen, publish, sign."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..options.commands import BenchOptions, KitOptions, PredictOptions, PublishOptions
from ..options.release import SignatureOptions
from .plumbing import (
    BundleRef,
    JsonOpt,
    ProgressOpt,
    TrustNativeOpt,
    TrustOpt,
    call,
    emit,
    gate_failed,
    options_command,
    out,
    root_of,
    steps,
)


@options_command
def predict(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.", show_default=False)],
    bundle: Annotated[str, typer.Option("--bundle", "-b", help="Export bundle: NAME, NAME@vN or a path.")],
    options: PredictOptions,
    signature: SignatureOptions,
    as_json: JsonOpt = False,
) -> None:
    """Classify image files with a bundle's ONNX model in onnxruntime (torch is not imported)."""
    from ..stages.predict import predict as run_predict
    from .render import render_predict

    result = call(lambda: run_predict(bundle, images, options, root_of(ctx), trust=signature.trust()))
    emit(as_json, result, lambda r: render_predict(out, r))


@options_command
def bench(
    ctx: typer.Context, ref: BundleRef, options: BenchOptions, signature: SignatureOptions,
    trust_native: TrustNativeOpt = False, trust_code: TrustOpt = False, as_json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Latency (p50, p99) and throughput of each runtime of a bundle at each batch size; exit 1 when
    a format cannot be loaded or run (a failed row, the others still timed)."""
    from ..stages.bench import bench as run_bench
    from .render import render_bench

    with steps(as_json, progress):
        result = call(lambda: run_bench(ref, options, root_of(ctx), trust_code=trust_code,
                                        trust=signature.trust(trust_native)))
    emit(as_json, result, lambda r: render_bench(out, r))
    if not result.passed:
        gate_failed("bench", f"{len(result.failed)} runtime(s) failed: {', '.join(result.failed)}")


@options_command
def kit(
    ctx: typer.Context, ref: BundleRef, options: KitOptions, signature: SignatureOptions, trust_code: TrustOpt = False,
    as_json: JsonOpt = False, progress: ProgressOpt = None,
) -> None:
    """Write a verification kit: the bundle's torch-free model files, real test images and the input tensors cnnpipe
    makes from them, PyTorch's logits, tolerances and check.py, which re-verifies the files on the device."""
    from ..stages.kit import kit as make_kit

    with steps(as_json, progress):
        result = call(lambda: make_kit(ref, options, root_of(ctx), trust=signature.trust(), trust_code=trust_code))
    emit(as_json, result, lambda r: out.print(
        f"kit of {escape(r.bundle)} at {escape(r.path)}: {', '.join(r.formats)}, {r.images} test images"
        f"{', signed' if r.signed else ''}; on the device: python check.py", highlight=False))


def keygen(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the two key files.")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Make an ECDSA P-256 key pair for signing bundles (cnnpipe-signing.key, private; .pub, public)."""
    from ..verification.signing import keygen as make_keys

    result = call(lambda: make_keys(out_dir))
    emit(as_json, result, lambda r: out.print(f"private key: {escape(r.private_key)} (keep it secret)\n"
                                              f"public key:  {escape(r.public_key)}", highlight=False))


@options_command
def publish(ctx: typer.Context, ref: BundleRef, options: PublishOptions, as_json: JsonOpt = False) -> None:
    """Register a verified export bundle as a version of an MLflow registered model (idempotent)."""
    from ..stages.publish import publish as run_publish

    result = call(lambda: run_publish(ref, options, root_of(ctx)))
    emit(as_json, result, lambda r: out.print(
        f"{escape(r.bundle)}: {escape(r.registered_model)} version {r.version} "
        f"({'registered' if r.created else 'already registered'}){f', alias {escape(r.alias)}' if r.alias else ''}; "
        f"load it with mlflow.pyfunc.load_model({r.model_uri!r})", highlight=False))


@options_command
def sign(
    ctx: typer.Context,
    ref: BundleRef,
    key: Annotated[Path, typer.Option("--key", help="Private key (PEM) to sign with (see cnnpipe keygen).")],
    as_json: JsonOpt = False,
) -> None:
    """Verify an export bundle, then sign every file of it (model-signing, key-pair mode): adds bundle.sig."""
    from ..stages.sign import sign as sign_bundle

    result = call(lambda: sign_bundle(ref, key, root_of(ctx)))
    emit(as_json, result, lambda r: out.print(f"signed {escape(r.bundle)}: {escape(r.signature)}", highlight=False))
