"""Stage 3: evaluate a model version on a split; overall and per-class metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnnpipe.data.loading import load_dataset
from cnnpipe.engine import batched_logits
from cnnpipe.errors import CnnpipeError
from cnnpipe.modelfile import load_model, resolve_device
from cnnpipe.provenance import lineage
from cnnpipe.store import Store, Workspace, write_json


@dataclass
class EvalResult:
    """Metrics of one model version on one split, and where they were written."""

    model: str
    split: str
    path: str
    accuracy: float
    loss: float
    images: int
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]


def metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, mean loss, per-class accuracy and the confusion matrix (rows: true class)."""
    k = len(classes)
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
    support = confusion.sum(1)
    correct = confusion.diag()
    per_class = [
        {
            "class": c,
            "support": int(support[i]),
            "correct": int(correct[i]),
            "accuracy": float(correct[i] / support[i]) if support[i] > 0 else None,
        }
        for i, c in enumerate(classes)
    ]
    return {
        "accuracy": float(correct.sum() / max(len(labels), 1)),
        "loss": float(F.cross_entropy(logits, labels)) if len(labels) else float("nan"),
        "images": len(labels),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate(
    model_ref: str,
    split: str = "test",
    root: Path = Path("."),
    batch_size: int = 1000,
    device: str = "auto",
) -> EvalResult:
    """Evaluate ``model_ref`` on ``split`` of the dataset it was trained on; write ``metrics.json``."""
    if split not in ("test", "val"):
        raise CnnpipeError(f"--split must be test or val, not {split!r}")
    if batch_size < 1:
        raise CnnpipeError(f"--batch-size must be at least 1, not {batch_size}")
    ws = Workspace(root)
    version = ws.models.resolve(model_ref)
    model, desc = load_model(version)
    dataset = load_dataset(ws.data.resolve(desc["dataset"]["ref"]))
    if dataset.dataset_hash != desc["dataset"]["hash"]:
        raise CnnpipeError(f"dataset {dataset.version.ref} does not have the hash {version.ref} was trained on")
    dev = resolve_device(device)
    images, labels = dataset.split(split)
    inp = desc["input"]
    logits = batched_logits(model.to(dev), images, inp["mean"], inp["std"], batch_size, dev)
    result = metrics(logits, labels, desc["classes"])
    store = Store(version.path / "eval", "evaluate", "evaluation", "run `cnnpipe evaluate`")
    with store.draft(split) as draft:
        write_json(draft.path / "metrics.json", {"model": version.ref, "split": split} | result)
        rows = [",".join(["true\\pred", *desc["classes"]])]
        rows += [",".join([c, *map(str, r)]) for c, r in zip(desc["classes"], result["confusion"])]
        (draft.path / "confusion.csv").write_text("\n".join(rows) + "\n")
        written = draft.commit(
            stage="evaluate",
            roles={"metrics.json": "metrics", "confusion.csv": "metrics"},
            lineage=lineage([version, dataset.version], {"split": split, "batch_size": batch_size}),
            results={"accuracy": result["accuracy"], "loss": result["loss"], "images": result["images"]},
        )
    return EvalResult(model=version.ref, split=split, path=str(written.path), **result)
