"""Stage 3: evaluate a model version on a split: metrics, plots, model card, optional gates.

The evaluation is a version of its own inside the model version
(``models/NAME/vN/eval/<split>/vK/``), so the model version stays immutable while
every evaluation of it is kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.loading import load_dataset
from ..description import ModelDescription
from ..errors import CnnpipeError
from ..evaluation.bounds import judge_drop, judge_proportion
from ..evaluation.card import PLOT_FILES, model_card
from ..evaluation.metrics import classification_metrics, compare, confident_errors
from ..evaluation.plots import plot_confusion, plot_misclassified, plot_per_class
from ..fs import write_json
from ..nets.modelfile import load_model, resolve_device
from ..options.commands import EvaluateOptions
from ..options.fields import check_batch_memory
from ..store.evaluations import eval_store
from ..store.provenance import lineage
from ..store.version import Version
from ..store.workspace import Workspace
from ..training.engine import batched_logits

METRICS_SCHEMA = "cnnpipe.metrics/1"


@dataclass
class EvalResult:
    """Metrics of one model version on one split, its gates, and where they were written."""

    model: str
    split: str
    path: str
    images: int
    accuracy: float | None
    top5_accuracy: float | None
    loss: float | None
    ece: float | None
    mean_confidence: float | None
    macro: dict[str, float | None]
    weighted: dict[str, float | None]
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]
    seconds: dict[str, float]
    comparison: dict[str, Any] | None = None
    accuracy_interval: list[float] | None = None  # 95%, Wilson
    gates: list[Gate] = field(default_factory=list)
    passed: bool = True


@dataclass(frozen=True)
class Gate:
    """One release gate's verdict (``metrics.json`` holds the same fields); ``bound``: the figure's 95%
    interval and three-way verdict (``evaluation.bounds.Judgement``)."""

    gate: str
    limit: float
    value: float | None
    passed: bool
    detail: str
    bound: dict[str, Any] | None = None


def gates(metrics: dict[str, Any], comparison: dict[str, Any] | None, min_accuracy: float | None,
          max_regression: float | None, gate_on: str = "bound") -> list[Gate]:
    """The accuracy floor and the regression limit (in points, overall or any class) as pass/fail records,
    each judged with its 95% bound or its point estimate (``gate_on``)."""
    found = []
    if min_accuracy is not None:
        correct = sum(c["correct"] for c in metrics["per_class"])
        judged = judge_proportion("accuracy", correct, metrics["images"], min_accuracy, gate_on)
        found.append(Gate("min_accuracy", min_accuracy, metrics["accuracy"], judged.passed,
                          judged.reason() or f"accuracy {metrics['accuracy']:.4f}, floor {min_accuracy:.4f}",
                          judged.as_dict()))
    if comparison is not None and max_regression is not None:
        rows = [("overall", comparison)] + [(f"class {r['class']}", r) for r in comparison["per_class"] if r["n"]]
        judged = {where: judge_drop(f"accuracy drop ({where})", r["worse"], r["better"], r["n"], max_regression, gate_on)
                  for where, r in rows}
        failing = [w for w, j in judged.items() if not j.passed]
        where = failing[0] if failing else max(judged, key=lambda w: judged[w].estimate.point)
        worst = judged[where]
        found.append(Gate(
            "max_regression", max_regression, worst.estimate.point, not failing,
            f"{worst.reason(' points') or f'largest drop {worst.estimate.point:.2f} points ({where})'} "
            f"against {comparison['against']}", worst.as_dict(),
        ))
    return found


def _baseline(ws: Workspace, ref: str, desc: ModelDescription, images: torch.Tensor, labels: torch.Tensor,
              batch_size: int, dev: torch.device, trust_code: bool) -> tuple[Version, dict[str, Any], torch.Tensor]:
    """Evaluate model ``ref`` on the same images, in memory: the comparison's other side, and which images it got right."""
    version = ws.models.resolve(ref)
    model, base = load_model(version, trust_code=trust_code)
    if base.classes != desc.classes or base.input != desc.input:
        raise CnnpipeError(
            f"cannot compare with {version.ref}: its classes or input "
            f"({'x'.join(map(str, base.input.shape))}, {len(base.classes)} classes) differ"
        )
    logits = batched_logits(model.to(dev), images, list(base.input.mean), list(base.input.std), batch_size, dev)
    return version, classification_metrics(logits, labels, list(base.classes)), logits.argmax(1) == labels


def evaluate(
    model_ref: str, options: EvaluateOptions | None = None, root: Path = Path("."), *, trust_code: bool = False,
) -> EvalResult:
    """Evaluate ``model_ref`` on ``options.split`` of the dataset it was trained on and write the evaluation.

    With ``options.against`` the other model version is evaluated on the same images and the
    per-class differences recorded; ``min_accuracy`` and ``max_regression`` become gates
    (see ``EvalResult.passed``). The evaluation is written whether or not a gate fails.
    """
    options = options or EvaluateOptions()
    options.validate()
    ws = Workspace(root)
    version = ws.models.resolve(model_ref)
    model, desc = load_model(version, trust_code=trust_code)
    dataset = load_dataset(ws.data.resolve(desc.dataset_ref))
    if dataset.dataset_hash != desc.dataset_hash:
        raise CnnpipeError(f"dataset {dataset.version.ref} does not have the hash {version.ref} was trained on")
    dev = resolve_device(options.device)
    images, labels = dataset.split(options.split)
    check_batch_memory(min(options.batch_size, len(labels)), desc.input.shape, "--batch-size")
    start = time.perf_counter()
    logits = batched_logits(model.to(dev), images, list(desc.input.mean), list(desc.input.std), options.batch_size, dev)
    result = classification_metrics(logits, labels, list(desc.classes))
    inference_s = time.perf_counter() - start
    parents = [version, dataset.version]
    comparison = None
    if options.against is not None:
        baseline, base_metrics, base_right = _baseline(ws, options.against, desc, images, labels, options.batch_size, dev,
                                                       trust_code)
        comparison = {"against": baseline.ref} | compare(result, base_metrics, logits.argmax(1) == labels,
                                                         base_right, labels)
        parents.append(baseline)
    checks = gates(result, comparison, options.min_accuracy, options.max_regression, options.gate_on)
    errors = confident_errors(logits, labels)
    written = _write_evaluation(version, desc, dataset.version, options, parents, images,
                                {**result, "misclassified": errors, "comparison": comparison}, checks)
    seconds = {"inference": round(inference_s, 4), "total": round(time.perf_counter() - start, 4)}
    return EvalResult(
        model=version.ref, split=options.split, path=str(written.path), seconds=seconds, comparison=comparison,
        gates=checks, passed=all(g.passed for g in checks), **result,
    )


def _write_evaluation(version: Version, desc: ModelDescription, dataset: Version, options: EvaluateOptions,
                      parents: list[Version], images: torch.Tensor, result: dict[str, Any], checks: list[Gate]) -> Version:
    """Commit the evaluation: metrics, confusion matrix (csv and plot), per-class and misclassified plots, card."""
    classes, split = list(desc.classes), options.split
    title = f"{version.ref} on {split}"
    plots = PLOT_FILES if options.plots else ()
    with eval_store(version).draft(split) as draft:
        if options.plots:
            plot_confusion(result["confusion"], classes, draft.path / "confusion.png", title)
            plot_per_class(result["per_class"], draft.path / "per_class.png", title)
            plot_misclassified(images, result["misclassified"], classes, draft.path / "misclassified.png", title)
        rows = [",".join(["true\\pred", *classes])]
        rows += [",".join([c, *map(str, r)]) for c, r in zip(classes, result["confusion"])]
        (draft.path / "confusion.csv").write_text("\n".join(rows) + "\n")
        metrics = {k: v for k, v in result.items() if k not in ("misclassified", "comparison")}
        card = model_card(version.ref, desc, version.read_json("train.json"), metrics, split, list(plots))
        (draft.path / "README.md").write_text(card)
        write_json(draft.path / "metrics.json", {
            "schema": METRICS_SCHEMA, "model": version.ref, "dataset": dataset.ref, "split": split,
            **result, "gates": [asdict(g) for g in checks],
        })
        return draft.commit(
            stage="evaluate",
            roles={"metrics.json": "metrics", "confusion.csv": "metrics", "README.md": "model card"}
            | {p: "plot" for p in plots},
            lineage=lineage(parents, {"split": split, "batch_size": options.batch_size, "against": options.against,
                                      "min_accuracy": options.min_accuracy, "max_regression": options.max_regression,
                                      "gate_on": options.gate_on}),
            results={"accuracy": result["accuracy"], "loss": result["loss"], "images": result["images"],
                     "passed": all(g.passed for g in checks)},
        )

