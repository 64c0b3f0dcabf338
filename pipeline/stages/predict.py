"""Classify image files with a bundle's ONNX model in onnxruntime: no torch on this path.

Preprocessing comes only from the bundle's embedded metadata: channels and size
(``input_shape``), ``mean`` and ``std``, and ``classes``. Images are decoded and run in
batches, so memory stays flat however many files are given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.imagefolder import decode_all
from ..errors import CnnpipeError, LoadFailed, first_line
from ..formats import FORMATS
from ..formats.onnx import ORT_PROVIDERS, onnx_session, stoppable_runs
from ..options.commands import PredictOptions
from ..options.fields import check_batch_memory
from ..store.workspace import Workspace
from ..verification.signing import Trust
from ..verification.timelimit import Deadline, within


@dataclass
class PredictResult:
    """Top-k classes per image, and what produced them."""

    bundle: str
    providers: list[str]
    images: int
    predictions: list[dict[str, Any]]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def preprocess(images: np.ndarray, meta: dict[str, str]) -> np.ndarray:
    """uint8 N×C×H×W to the float32 input the metadata describes: ``(pixel / 255 - mean) / std``."""
    mean = np.asarray(json.loads(meta["mean"]), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["std"]), dtype=np.float32).reshape(1, -1, 1, 1)
    return (images.astype(np.float32) / np.float32(255.0) - mean) / std


def predict(
    bundle_ref: str, paths: list[Path], options: PredictOptions | None = None, root: Path = Path("."), *,
    trust: Trust | None = None,
) -> PredictResult:
    """Top-``options.top_k`` classes with probabilities for each image file, from the bundle's ONNX model;
    inference that takes over ``options.timeout`` seconds is stopped with a usage error."""
    options = options or PredictOptions()
    if not paths:
        raise CnnpipeError("give at least one image file: cnnpipe predict IMAGE... --bundle REF")
    options.validate()
    top_k, provider, batch_size = options.top_k, options.provider, options.batch_size
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise CnnpipeError(f"{missing[0]}: no such image file" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    bundle = Workspace(root).exports.resolve(bundle_ref)
    (trust or Trust()).admit(bundle)  # before anything of the bundle is read
    bundle.rehash()
    path = bundle.file(FORMATS["onnx"].file)
    try:
        session = onnx_session(path, provider)
    except Exception as e:  # onnxruntime raises its own exception types for files it cannot load
        raise LoadFailed(f"{path}: onnxruntime cannot load it ({first_line(e)})") from e
    if session.get_providers()[0] != ORT_PROVIDERS[provider]:
        raise CnnpipeError(f"{ORT_PROVIDERS[provider]} was asked for but onnxruntime runs on {session.get_providers()[0]}")
    meta = session.get_modelmeta().custom_metadata_map
    channels, height, width = json.loads(meta["input_shape"])
    check_batch_memory(min(batch_size, len(paths)), [channels, height, width], "--batch-size")
    if height != width:
        raise CnnpipeError(f"{bundle.ref}: input {height}x{width} is not square; predict resizes to squares only")
    graph_shape = session.get_inputs()[0].shape[1:]
    if graph_shape != [channels, height, width]:
        raise CnnpipeError(
            f"{path}: the graph takes input {graph_shape} but its metadata says {[channels, height, width]}; "
            "the bundle is inconsistent: export it again"
        )
    classes = json.loads(meta["classes"])
    run_options, cancel = stoppable_runs()

    def classify(deadline: Deadline) -> list[dict[str, Any]]:
        deadline.cancel = cancel
        found = []
        for start in range(0, len(paths), batch_size):
            chunk = [Path(p) for p in paths[start : start + batch_size]]
            decoded = decode_all([(p, 0) for p in chunk], height, channels)
            if decoded.failures:
                raise CnnpipeError(f"not a readable image: {decoded.failures[0]}")
            probs = softmax(session.run(None, {meta["input_name"]: preprocess(decoded.images, meta)}, run_options)[0])
            for path, p in zip(chunk, probs):
                order = np.argsort(-p, kind="stable")[:min(top_k, len(classes))]
                found.append({"path": str(path), "top": [{"class": classes[i], "probability": float(p[i])} for i in order]})
        return found

    predictions = within(options.timeout, f"{bundle.ref}: {path.name}", classify)
    return PredictResult(bundle=bundle.ref, providers=session.get_providers(), images=len(predictions), predictions=predictions)
