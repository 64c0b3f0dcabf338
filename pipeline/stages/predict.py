"""Classify image files with a bundle's ONNX model in onnxruntime: no torch on this path.

Preprocessing comes only from the bundle's embedded metadata: channels and size
(``input_shape``), ``mean`` and ``std``, and ``classes``. Images are decoded and run in
batches, so memory stays flat however many files are given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.imagefolder import MAX_PIXELS, decode_all
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


def normalized(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 N×C×H×W to float32 ``(pixel / 255 - mean) / std``, per channel."""
    return (images.astype(np.float32) / np.float32(255.0) - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)


def preprocess(images: np.ndarray, meta: dict[str, str]) -> np.ndarray:
    """uint8 N×C×H×W to the float32 input the metadata of a verified bundle describes."""
    return normalized(images, np.asarray(json.loads(meta["mean"]), np.float32),
                      np.asarray(json.loads(meta["std"]), np.float32))


@dataclass(frozen=True)
class Metadata:
    """What a bundle's ONNX metadata says its graph takes and answers, checked against the graph."""

    input_name: str
    shape: list[int]  # channels, height, width
    mean: np.ndarray
    std: np.ndarray
    classes: list[str]


def _field(meta: dict[str, str], key: str, fits: Any, shape: str, where: str) -> Any:
    """Metadata field ``key`` parsed as JSON (``input_name`` as text) when ``fits`` it; else a usage error naming
    the field and the shape it needs, never quoting it."""
    try:
        value = meta[key] if key == "input_name" else json.loads(meta[key])
        if fits(value):
            return value
    except (KeyError, ValueError, TypeError):
        pass
    raise CnnpipeError(f"{where}: its metadata {key!r} is missing or not {shape}; the bundle is damaged: export it again")


def read_metadata(session: Any, where: str) -> Metadata:
    """The checked metadata of an onnxruntime ``session``: a one-line usage error for any field missing, of the
    wrong shape, or disagreeing with the graph (input name and shape, class count), or a std of 0."""
    meta = session.get_modelmeta().custom_metadata_map
    shape = _field(meta, "input_shape", lambda v: isinstance(v, list) and len(v) == 3 and all(
        type(d) is int and d >= 1 for d in v) and v[0] in (1, 3) and v[1] * v[2] <= MAX_PIXELS,
        f"[channels, height, width] (1 or 3 channels, at most {MAX_PIXELS:,} pixels)", where)
    graph_in, graph_out = session.get_inputs()[0], session.get_outputs()[0]
    if graph_in.shape[1:] != shape:
        raise CnnpipeError(f"{where}: the graph takes input {graph_in.shape[1:]} but its metadata says {shape}; "
                           "the bundle is inconsistent: export it again")

    def per_channel(v: Any) -> bool:
        return isinstance(v, list) and len(v) == shape[0] and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)

    each = f"{shape[0]} {{}} number" + ("s" if shape[0] > 1 else "")
    mean = _field(meta, "mean", per_channel, each.format("finite"), where)
    std = _field(meta, "std", lambda v: per_channel(v) and min(v) > 0, each.format("positive"), where)
    classes = _field(meta, "classes", lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v),
                     "a list of class names", where)
    name = _field(meta, "input_name", lambda v: v == graph_in.name, f"the graph's input name {graph_in.name!r}", where)
    if graph_out.shape[-1] != len(classes):
        raise CnnpipeError(f"{where}: the graph answers {graph_out.shape[-1]} scores but its metadata names "
                           f"{len(classes)} classes; the bundle is inconsistent: export it again")
    return Metadata(name, shape, np.asarray(mean, np.float32), np.asarray(std, np.float32), classes)


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
    meta = read_metadata(session, str(path))
    channels, height, width = meta.shape
    check_batch_memory(min(batch_size, len(paths)), meta.shape, "--batch-size")
    if height != width:
        raise CnnpipeError(f"{bundle.ref}: input {height}x{width} is not square; predict resizes to squares only")
    classes = meta.classes
    run_options, cancel = stoppable_runs()

    def classify(deadline: Deadline) -> list[dict[str, Any]]:
        deadline.cancel = cancel
        found = []
        for start in range(0, len(paths), batch_size):
            chunk = [Path(p) for p in paths[start : start + batch_size]]
            decoded = decode_all([(p, 0) for p in chunk], height, channels)
            if decoded.failures:
                raise CnnpipeError(f"not a readable image: {decoded.failures[0]}")
            x = normalized(decoded.images, meta.mean, meta.std)
            probs = softmax(session.run(None, {meta.input_name: x}, run_options)[0])
            for path, p in zip(chunk, probs):
                order = np.argsort(-p, kind="stable")[:min(top_k, len(classes))]
                found.append({"path": str(path), "top": [{"class": classes[i], "probability": float(p[i])} for i in order]})
        return found

    predictions = within(options.timeout, f"{bundle.ref}: {path.name}", classify)
    return PredictResult(bundle=bundle.ref, providers=session.get_providers(), images=len(predictions), predictions=predictions)
