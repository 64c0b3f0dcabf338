"""The plots that stages write into versions (matplotlib, headless): samples, class counts,
training curves, confusion matrix, per-class scores and the most confident mistakes.

A plot shows at most ``MAX_CLASSES`` classes (the worst, or the largest and smallest, as each
says in its title), so its size and drawing time stay bounded whatever the class count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAX_CLASSES = 40  # classes one plot shows; with more, it picks and says which


def _shown(picked: int, total: int, which: str) -> str:
    """The title's note on the classes left out ("" when all are shown)."""
    return f" ({picked} of {total:,} classes: {which})" if picked < total else ""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(split: tuple[Any, Any], classes: list[str], path: Path, title: str, per_class: int = 8) -> None:
    """One row per class of its first training images, as the seeds' ``show_dataset``, drawn as one
    mosaic; with over ``MAX_CLASSES`` classes, the largest ones."""
    plt = _pyplot()
    images, labels = split
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(classes))
    rows = sorted(np.argsort(-counts, kind="stable")[:MAX_CLASSES].tolist())
    c, h, w = images.shape[1:] if len(images) else (1, 28, 28)
    pad = 2
    mosaic = np.full((len(rows) * (h + pad), per_class * (w + pad), 3), 255, dtype=np.uint8)
    for r, k in enumerate(rows):
        for col, i in enumerate(np.flatnonzero(labels == k)[:per_class]):
            tile = np.asarray(images[i])
            top, left = r * (h + pad), col * (w + pad)
            mosaic[top : top + h, left : left + w] = tile.transpose(1, 2, 0) if c == 3 else tile[0][..., None]
    fig, ax = plt.subplots(figsize=(per_class * 0.9 + 1.5, len(rows) * 0.9 + 0.5))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (h + pad) + h / 2 for r in range(len(rows))], [classes[k] for k in rows], fontsize=8)
    ax.set_title(f"{title}: training samples per class{_shown(len(rows), len(classes), 'the largest')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_class_counts(counts: dict[str, dict[str, int]], path: Path, title: str) -> None:
    """Images per class in each split, as grouped bars."""
    plt = _pyplot()
    splits = list(counts)
    every = list(next(iter(counts.values())))
    by_size = sorted(every, key=lambda c: -sum(counts[s][c] for s in splits))
    half = MAX_CLASSES // 2
    classes = every if len(every) <= MAX_CLASSES else by_size[:half] + by_size[-half:]
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.6), 4))
    for k, split in enumerate(splits):
        xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(classes))]
        ax.bar(xs, [counts[split][c] for c in classes], width, label=split)
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 10 else 0, ha="right")
    ax.set_ylabel("images")
    ax.set_title(f"{title}: class distribution{_shown(len(classes), len(every), 'the largest and smallest')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train and validation, side by side, as a PNG."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        validated = [r for r in history if f"val_{key}" in r]  # --val-every N validates every N-th epoch
        ax.plot([r["epoch"] for r in validated], [r[f"val_{key}"] for r in validated], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """The confusion matrix as a heatmap, each row normalized to its class's support."""
    plt = _pyplot()
    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    total = len(classes)
    if total > MAX_CLASSES:  # the classes recognised worst, rows and columns
        keep = sorted(np.argsort(np.diag(rates), kind="stable")[:MAX_CLASSES].tolist())
        counts, rates, classes = counts[np.ix_(keep, keep)], rates[np.ix_(keep, keep)], [classes[i] for i in keep]
    k = len(classes)
    size = min(4 + 0.45 * k, 14)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45 if k > 5 else 0, ha="right" if k > 5 else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(f"{title}: confusion matrix (rows normalized){_shown(k, total, 'the worst recognised')}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_per_class(per_class: list[dict[str, Any]], path: Path, title: str) -> None:
    """Per-class accuracy, precision and recall as bars, worst accuracy first."""
    plt = _pyplot()
    supported = sorted((c for c in per_class if c["support"]), key=lambda c: c["accuracy"])
    rows = supported[:MAX_CLASSES]
    ys = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.35 * len(rows)))
    height = 0.27
    for offset, key in ((-height, "accuracy"), (0.0, "precision"), (height, "f1")):
        ax.barh(ys + offset, [c[key] or 0.0 for c in rows], height, label=key)
    ax.set_yticks(ys, [c["class"] for c in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.set_title(f"{title}: per class, worst accuracy first{_shown(len(rows), len(supported), 'the worst')}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_misclassified(images: Any, errors: list[dict[str, Any]], classes: list[str], path: Path, title: str) -> None:
    """A grid of the most confidently wrong images, each labelled true → predicted (confidence).

    The grid is one mosaic image on one axes, so it renders in a fraction of the time
    that one axes per image takes.
    """
    plt = _pyplot()
    cols = 8
    rows = max(1, -(-len(errors) // cols))
    tiles = [np.asarray(images[e["index"]]) for e in errors]
    c, h, w = tiles[0].shape if tiles else (1, 28, 28)
    pad_top, pad = max(10, h // 2), 2
    cell_h, cell_w = h + pad_top + pad, w + 2 * pad
    mosaic = np.full((rows * cell_h, cols * cell_w, 3), 255, dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(cols * 1.5, rows * 1.75 + 0.5))
    for k, (tile, e) in enumerate(zip(tiles, errors)):
        top, left = (k // cols) * cell_h + pad_top, (k % cols) * cell_w + pad
        mosaic[top : top + h, left : left + w] = tile.transpose(1, 2, 0) if c == 3 else tile[0][..., None]
        ax.text(left + w / 2, top - 1, f"{classes[e['true']]} → {classes[e['predicted']]} ({e['confidence']:.0%})",
                ha="center", va="bottom", fontsize=7, clip_on=True)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    if not errors:
        ax.text(0, 0, "no misclassified images", fontsize=10, va="top")
    ax.set_title(f"{title}: most confident mistakes, true → predicted (confidence)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
