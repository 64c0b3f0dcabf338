"""Parity of one format's logits with the PyTorch reference: the figures and the verdict.

Pure numpy: the logits come from a worker (``verification.worker``), the reference from verify.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import CnnpipeError
from ..evaluation.bounds import judge_drop, judge_proportion, paired_drop, proportion
from ..formats.base import Tolerance


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
    mean_abs_diff: float | None = None
    median_abs_diff: float | None = None
    nonfinite: int | None = None  # NaN or Inf logits
    topk_agreement: float | None = None  # images whose top-k class indices are the same set (k = min(5, classes))
    bound_ratio: float | None = None  # max of |diff| / (atol + rtol·|reference|): above 1 breaches the bound
    max_abs_diff_by_class: dict[str, float] = field(default_factory=dict)
    by_batch_size: dict[str, dict[str, float | None]] = field(default_factory=dict)
    providers: list[str] | None = None
    localization: dict[str, Any] | None = None  # for a failed ONNX file: the first layer that departs
    bounds: dict[str, Any] = field(default_factory=dict)  # 95% intervals and verdicts of the accuracy-type gates
    sandbox: str | None = None  # how the worker that ran it was confined (verification.sandbox)


def _diffs(out: np.ndarray, ref: np.ndarray, tol: Tolerance) -> dict[str, float | int | None]:
    """Error statistics of ``out`` against the reference logits (over the finite logits; NaN/Inf counted)."""
    finite = np.isfinite(out)
    magnitude = np.abs(ref.astype(np.float64))[finite]
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))[finite]
    if not diff.size:  # every logit NaN or Inf
        diff, magnitude = np.array([np.inf]), np.array([0.0])
    k = min(5, ref.shape[1])
    top = np.sort(np.argsort(-out, axis=1)[:, :k], axis=1), np.sort(np.argsort(-ref, axis=1)[:, :k], axis=1)

    def number(value: float) -> float | None:  # strict JSON: no Infinity
        return float(value) if np.isfinite(value) else None

    return {
        "max_abs_diff": number(diff.max()),
        "max_rel_diff": number((diff / np.maximum(magnitude, 1e-3)).max()),
        "p99_abs_diff": number(np.quantile(diff, 0.99)),
        "mean_abs_diff": number(diff.mean()),
        "median_abs_diff": number(np.median(diff)),
        "nonfinite": int((~finite).sum()),
        "top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
        "topk_agreement": float((top[0] == top[1]).all(axis=1).mean()),
        "bound_ratio": None if tol.atol is None else number((diff / (tol.atol + tol.rtol * magnitude)).max()),
    }


def _by_class(out: np.ndarray, ref: np.ndarray, classes: list[str]) -> dict[str, float]:
    """The largest difference of each class's logit (NaN/Inf logits are counted apart, as 0 here)."""
    diff = np.where(np.isfinite(out), np.abs(out.astype(np.float64) - ref), 0.0)
    return {c: float(v) for c, v in zip(classes, diff.max(axis=0))}


def per_class(pred: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    return {
        c: float((pred[labels == i] == i).mean()) if (labels == i).any() else None for i, c in enumerate(classes)
    }


def check_format(
    name: str, runtime: str, outputs: dict[int, np.ndarray], ref: np.ndarray, labels: np.ndarray,
    classes: list[str], tol: Tolerance, problems: list[str], gate_on: str = "bound",
) -> FormatReport:
    """Judge a format's logits at every batch size (``outputs``) against the reference logits; the agreement
    floor and the accuracy-drop limit are judged with their 95% bounds (``gate_on``: see ``evaluation.bounds``)."""
    by_batch, reasons = {}, list(problems)
    ref_pred = ref.argmax(1)
    ref_accuracy = float((ref_pred == labels).mean())
    bound = None if tol.atol is None else tol.atol + tol.rtol * np.abs(ref.astype(np.float64))
    agreements = {}
    for b, out in outputs.items():
        if out.shape != ref.shape:
            raise CnnpipeError(f"{name}: output shape {out.shape} at batch {b}, expected {ref.shape}")
        d = by_batch[str(b)] = _diffs(out, ref, tol)
        if d["nonfinite"]:
            reasons.append(f"{d['nonfinite']} NaN or Inf logits at batch {b}")
        excess = None if bound is None else np.abs(out.astype(np.float64) - ref) - bound
        if excess is not None and not excess.max() <= 0:  # NaN fails too
            where = np.unravel_index(np.nanargmax(excess), excess.shape)
            reasons.append(
                f"logits beyond atol {tol.atol:g} + rtol {tol.rtol:g}·|ref| at batch {b}: image {where[0]} "
                f"differs by {abs(out[where] - ref[where]):.3g} on a logit of {ref[where]:.3g}"
            )
        agreements[b] = judge_proportion("top-1 agreement", int((out.argmax(1) == ref_pred).sum()), len(ref),
                                         tol.min_agreement, gate_on)
        if (why := agreements[b].reason()) is not None:
            reasons.append(f"{why} at batch {b}")
    worst = max(outputs, key=lambda b: (by_batch[str(b)]["nonfinite"], by_batch[str(b)]["max_abs_diff"] or np.inf))
    pred = outputs[worst].argmax(1)
    right, ref_right = pred == labels, ref_pred == labels
    accuracy = float(right.mean())
    delta = round(100 * (accuracy - ref_accuracy), 4)
    worse, better = int((ref_right & ~right).sum()), int((right & ~ref_right).sum())
    drop = paired_drop(worse, better, len(labels)).as_dict()
    if tol.max_accuracy_drop is not None:
        judged = judge_drop("accuracy drop", worse, better, len(labels), tol.max_accuracy_drop, gate_on)
        drop = judged.as_dict()
        if (why := judged.reason(" points")) is not None:
            reasons.append(f"accuracy {accuracy:.4f} against PyTorch's {ref_accuracy:.4f}: {why}")
    flipped = sorted({int(i) for out in outputs.values() for i in np.flatnonzero(out.argmax(1) != ref.argmax(1))})
    least = min(agreements, key=lambda b: agreements[b].estimate.point)
    bounds = {"top1_agreement": agreements[least].as_dict() | {"batch_size": least},
              "accuracy": proportion(int(right.sum()), len(labels)).as_dict(),
              "accuracy_drop_points": drop}
    return FormatReport(
        format=name, runtime=runtime, passed=not reasons, reasons=reasons, tolerance=asdict(tol),
        flipped=flipped[:100], accuracy=accuracy, accuracy_delta_points=delta,
        per_class_accuracy=per_class(pred, labels, classes), by_batch_size=by_batch, **by_batch[str(worst)],
        max_abs_diff_by_class=_by_class(outputs[worst], ref, classes), bounds=bounds,
    )
