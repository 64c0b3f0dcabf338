"""Classification metrics from logits and labels: what ``metrics.json`` holds.

Conventions (stated in the README): a ratio whose denominator is 0 is ``None``
(JSON null): the precision of a class never predicted, the recall and accuracy of
a class absent from the split. F1 is ``2·tp / (2·tp + fp + fn)``, so it is 0, not
undefined, for a present class that is never predicted. Macro averages are over
the classes present in the split, an undefined precision counting as 0; weighted
averages weight each class by its support.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .bounds import wilson

TOP_K = 5
ECE_BINS = 15


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE: the support-weighted gap between accuracy and mean confidence over equal-width bins."""
    if len(confidence) == 0:
        return float("nan")
    index = (confidence * bins).long().clamp(max=bins - 1)
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    correct_sum = torch.bincount(index, weights=correct.double(), minlength=bins)
    return float((conf_sum - correct_sum).abs().sum() / len(confidence))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Every figure of ``metrics.json`` for float logits (N×K) and int64 labels (N)."""
    k, n = len(classes), len(labels)
    probs = F.softmax(logits.float(), 1)
    confidence, pred = probs.max(1)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
    support, predicted, tp = confusion.sum(1), confusion.sum(0), confusion.diag()
    per_class = []
    for i, name in enumerate(classes):
        t, s, p = int(tp[i]), int(support[i]), int(predicted[i])
        per_class.append({
            "class": name,
            "support": s,
            "predicted": p,
            "correct": t,
            "accuracy": _ratio(t, s),
            "accuracy_interval": list(wilson(t, s)) if s else None,
            "precision": _ratio(t, p),
            "recall": _ratio(t, s),
            "f1": _ratio(2 * t, s + p),
        })
    present = [c for c in per_class if c["support"] > 0]
    averages = {}
    for key in ("precision", "recall", "f1"):
        values = [c[key] or 0.0 for c in present]
        averages[key] = {
            "macro": sum(values) / len(present) if present else None,
            "weighted": sum(v * c["support"] for v, c in zip(values, present)) / n if n else None,
        }
    top5 = None
    if k > TOP_K and n:
        top5 = float((logits.topk(TOP_K, 1).indices == labels[:, None]).any(1).float().mean())
    return {
        "images": n,
        "accuracy": float(tp.sum()) / n if n else None,
        "accuracy_interval": list(wilson(int(tp.sum()), n)) if n else None,  # 95%, Wilson (evaluation.bounds)
        "top5_accuracy": top5,
        "loss": float(F.cross_entropy(logits.float(), labels)) if n else None,
        "ece": expected_calibration_error(confidence, pred == labels) if n else None,
        "mean_confidence": float(confidence.mean()) if n else None,
        "macro": {key: averages[key]["macro"] for key in averages},
        "weighted": {key: averages[key]["weighted"] for key in averages},
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def confident_errors(logits: torch.Tensor, labels: torch.Tensor, limit: int = 32) -> list[dict[str, Any]]:
    """The ``limit`` wrong predictions with the highest confidence, most confident first."""
    confidence, pred = F.softmax(logits.float(), 1).max(1)
    wrong = torch.nonzero(pred != labels).flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:limit]
    return [
        {"index": int(i), "true": int(labels[i]), "predicted": int(pred[i]), "confidence": float(confidence[i])}
        for i in order
    ]


def compare(current: dict[str, Any], baseline: dict[str, Any], right: torch.Tensor, base_right: torch.Tensor,
            labels: torch.Tensor) -> dict[str, Any]:
    """Accuracy differences, in points (percent), overall and per class present in both, with the paired
    counts a drop's bound needs (``right``, ``base_right``: which images each model got right): ``worse``
    images the baseline got right and this model wrong, ``better`` the reverse."""
    def points(new: float | None, old: float | None) -> float | None:
        return None if new is None or old is None else round(100 * (new - old), 4)

    def paired(mask: torch.Tensor) -> dict[str, int]:
        return {"worse": int((base_right & ~right & mask).sum()), "better": int((right & ~base_right & mask).sum()),
                "n": int(mask.sum())}

    rows = [
        {"class": c["class"], "accuracy": c["accuracy"], "baseline": b["accuracy"],
         "delta_points": points(c["accuracy"], b["accuracy"])} | paired(labels == i)
        for i, (c, b) in enumerate(zip(current["per_class"], baseline["per_class"]))
    ]
    return {
        "accuracy": current["accuracy"],
        "baseline": baseline["accuracy"],
        "delta_points": points(current["accuracy"], baseline["accuracy"]),
        **paired(torch.ones_like(labels, dtype=torch.bool)),
        "per_class": sorted(rows, key=lambda r: (r["delta_points"] is None, r["delta_points"] or 0.0)),
    }
