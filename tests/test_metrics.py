"""Evaluation metrics against values worked out by hand on small labelled sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnnpipe.evaluation.metrics import classification_metrics, compare, confident_errors, expected_calibration_error
from cnnpipe.stages.evaluate import gates

CLASSES = ["a", "b", "c", "d"]
# Class c is present but never predicted; class d is absent from the split but predicted once.
LABELS = [0, 0, 0, 1, 1, 2, 2, 2]
PREDS = [0, 0, 1, 1, 0, 1, 0, 3]


def logits_for(preds: list[int], k: int, margin: list[float]) -> torch.Tensor:
    """Logits whose argmax is ``preds`` with the given margins over the other classes."""
    logits = torch.zeros(len(preds), k)
    for i, (p, m) in enumerate(zip(preds, margin)):
        logits[i, p] = m
    return logits


def test_per_class_precision_recall_f1_with_a_never_predicted_and_an_absent_class():
    margins = [2.0, 1.0, 3.0, 0.5, 1.5, 2.5, 0.7, 1.2]
    m = classification_metrics(logits_for(PREDS, 4, margins), torch.tensor(LABELS), CLASSES)
    a, b, c, d = m["per_class"]
    assert (a["support"], a["predicted"], a["correct"]) == (3, 4, 2)
    assert a["precision"] == pytest.approx(0.5) and a["recall"] == pytest.approx(2 / 3)
    assert a["f1"] == pytest.approx(4 / 7)
    assert b["precision"] == pytest.approx(1 / 3) and b["recall"] == pytest.approx(0.5) and b["f1"] == pytest.approx(0.4)
    # c: present, never predicted: precision undefined (null), recall and F1 zero.
    assert c["precision"] is None and c["recall"] == 0.0 and c["f1"] == 0.0 and c["accuracy"] == 0.0
    # d: absent, predicted once: recall and accuracy undefined, precision and F1 zero.
    assert d["support"] == 0 and d["recall"] is None and d["accuracy"] is None
    assert d["precision"] == 0.0 and d["f1"] == 0.0
    assert m["accuracy"] == pytest.approx(3 / 8) and m["images"] == 8
    # Macro: over the three present classes, c's undefined precision counting as 0.
    assert m["macro"]["precision"] == pytest.approx((0.5 + 1 / 3 + 0) / 3)
    assert m["macro"]["recall"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m["macro"]["f1"] == pytest.approx((4 / 7 + 0.4) / 3)
    assert m["weighted"]["precision"] == pytest.approx((0.5 * 3 + 1 / 3 * 2) / 8)
    assert m["weighted"]["recall"] == pytest.approx(3 / 8)  # weighted recall is accuracy
    assert m["weighted"]["f1"] == pytest.approx((4 / 7 * 3 + 0.4 * 2) / 8)
    assert m["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]]
    assert m["top5_accuracy"] is None  # 4 classes: top-5 is meaningless


def test_loss_and_calibration_match_a_direct_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 10)) * 3
    labels = rng.integers(0, 10, 500)
    m = classification_metrics(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels), list("0123456789"))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert m["loss"] == pytest.approx(float(np.mean(-np.log(probs[np.arange(500), labels]))), rel=1e-5)
    conf, pred = probs.max(1), probs.argmax(1)
    ece = 0.0
    for lo in np.arange(15) / 15:
        inside = (conf >= lo) & (conf < lo + 1 / 15)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - (pred[inside] == labels[inside]).mean())
    assert m["ece"] == pytest.approx(ece, abs=1e-6)
    top5 = np.mean([labels[i] in np.argsort(-logits[i])[:5] for i in range(500)])
    assert m["top5_accuracy"] == pytest.approx(top5)
    assert m["mean_confidence"] == pytest.approx(conf.mean(), rel=1e-5)


def test_ece_of_an_overconfident_model():
    confidence = torch.full((10,), 0.9)
    correct = torch.tensor([True] * 5 + [False] * 5)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.4)
    assert expected_calibration_error(torch.ones(4), torch.ones(4, dtype=torch.bool)) == pytest.approx(0.0)


def test_confident_errors_are_the_wrong_answers_most_sure_first():
    margins = [2.0, 1.0, 3.0, 0.5, 1.5, 2.5, 0.7, 1.2]
    errors = confident_errors(logits_for(PREDS, 4, margins), torch.tensor(LABELS), limit=3)
    # Wrong: indices 2 (margin 3.0), 4 (1.5), 5 (2.5), 6 (0.7), 7 (1.2).
    assert [e["index"] for e in errors] == [2, 5, 4]
    assert errors[0]["true"] == 0 and errors[0]["predicted"] == 1
    assert errors[0]["confidence"] == pytest.approx(math.exp(3) / (math.exp(3) + 3))


def test_regression_gate_names_the_class_that_got_worse():
    labels = torch.tensor(LABELS)
    old = classification_metrics(logits_for(LABELS, 4, [1.0] * 8), labels, CLASSES)  # all right
    new = classification_metrics(logits_for(PREDS, 4, [1.0] * 8), labels, CLASSES)
    right_old, right_new = torch.ones(8, dtype=torch.bool), torch.tensor(PREDS) == labels
    comparison = {"against": "m@v1"} | compare(new, old, right_new, right_old, labels)
    assert comparison["worse"] == 5 and comparison["better"] == 0 and comparison["n"] == 8
    assert comparison["delta_points"] == pytest.approx(-62.5)
    by_class = {r["class"]: r["delta_points"] for r in comparison["per_class"]}
    assert by_class["c"] == pytest.approx(-100.0) and by_class["d"] is None
    (gate,) = gates(new, comparison, None, 70.0, "point")
    assert not gate.passed and gate.value == pytest.approx(100.0) and "class c" in gate.detail
    same = {"against": "m@v1"} | compare(old, old, right_old, right_old, labels)
    floor, regression = gates(old, same, 0.99, 0.0, "point")
    assert floor.passed and regression.passed and regression.value == 0.0
    # on its 95% bound, 8 images right of 8 cannot show an accuracy of 0.99: undecided, so the gate fails
    floor, regression = gates(old, same, 0.99, 0.0, "bound")
    assert not floor.passed and floor.bound["verdict"] == "undecided" and "would decide it" in floor.detail
    assert floor.bound["images_needed"] > 300
    (floor,) = gates(new, None, 0.5, None)
    assert not floor.passed
