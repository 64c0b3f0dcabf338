"""What people look at: plots, the training progress bar, and result tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(split: tuple[Any, Any], classes: list[str], path: Path, title: str, per_class: int = 8) -> None:
    """A grid with one row per class of its first training images, as the seeds' ``show_dataset``."""
    plt = _pyplot()
    images, labels = split
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.9 + 0.5), squeeze=False)
    for row, name in enumerate(classes):
        picks = np.flatnonzero(np.asarray(labels) == row)[:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picks):
                img = images[picks[col]]
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
            if col == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{title}: training samples per class")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_class_counts(counts: dict[str, dict[str, int]], path: Path, title: str) -> None:
    """Images per class in each split, as grouped bars."""
    plt = _pyplot()
    splits = list(counts)
    classes = list(next(iter(counts.values())))
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.6), 4))
    for k, split in enumerate(splits):
        xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(classes))]
        ax.bar(xs, [counts[split][c] for c in classes], width, label=split)
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 10 else 0, ha="right")
    ax.set_ylabel("images")
    ax.set_title(f"{title}: class distribution")
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
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="validation")
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
    ax.set_title(f"{title}: confusion matrix (rows normalized)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_per_class(per_class: list[dict[str, Any]], path: Path, title: str) -> None:
    """Per-class accuracy, precision and recall as bars, worst accuracy first."""
    plt = _pyplot()
    rows = sorted((c for c in per_class if c["support"]), key=lambda c: c["accuracy"])
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
    ax.set_title(f"{title}: per class, worst accuracy first")
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


class ByteProgress:
    """A rich progress bar per downloaded file (on stderr); pass ``update`` as ``on_bytes``."""

    def __init__(self, console: Console):
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tasks:
            self.bar.stop()

    def update(self, fname: str, done: int, total: int | None) -> None:
        if not self.tasks:
            self.bar.start()
        if fname not in self.tasks:
            self.tasks[fname] = self.bar.add_task(fname, total=total)
        self.bar.update(self.tasks[fname], completed=done)


class TrainProgress:
    """A rich progress bar per epoch with loss, accuracy and images/s (on stderr)."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}  {task.fields[ips]:,.0f} img/s"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.task: Any = None

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Remove the bar (training is over); further calls do nothing."""
        if self.task is not None:
            self.bar.stop()
            self.task = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        fields = {"epoch": f"{epoch}/{epochs}", "loss": 0.0, "acc": 0.0, "ips": 0.0}
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("train", total=steps, **fields)
        else:
            self.bar.reset(self.task, total=steps, **fields)

    def advance(self, steps: int, images: int, loss: float, accuracy: float) -> None:
        elapsed = self.bar.tasks[0].elapsed or 1e-9
        self.bar.update(self.task, advance=steps, loss=loss, acc=accuracy, ips=images / elapsed)

    def end_epoch(self, record: dict[str, Any]) -> None:
        self.console.print(
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
            f"  val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}"
            f"  {record['images_per_s']:,.0f} img/s"
        )


def table(columns: list[str], rows: list[list[Any]]) -> Table:
    """A rich table; floats are shown with 4 decimals."""
    t = Table()
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right")
    for row in rows:
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return t


def render_download(console: Console, r: Any) -> None:
    counts = ", ".join(f"{part} {sum(c.values()):,}" for part, c in r.counts.items())
    verb = "already present as" if r.reused else "wrote"
    console.print(f"download: {verb} [bold]{r.ref}[/] ({counts}) at {r.path}")
    console.print(f"  dataset hash {r.dataset_hash}; mean {r.mean}, std {r.std}", highlight=False)
    for failure in r.skipped:
        console.print(f"  [yellow]skipped[/] {failure}", highlight=False)


def render_train(console: Console, r: Any) -> None:
    compiled = f", compiled (first step {r.compile_s:.1f} s)" if r.compiled else ""
    notes = "".join(
        [
            f", stopped early after epoch {r.epochs_run}" if r.stopped_early else "",
            f", resumed from {r.resumed_from}" if r.resumed_from else "",
            f", {r.world_size} processes" if r.world_size > 1 else "",
        ]
    )
    console.print(
        f"train: wrote [bold]{r.ref}[/] at {r.path}: best epoch {r.best_epoch}, "
        f"val accuracy {r.val_accuracy:.4f}, {r.params:,} params, {r.device} {r.precision}{compiled}, "
        f"{r.train_s:.1f} s, {r.images_per_s:,.0f} img/s{notes}"
    )


def render_models(console: Console, rows: list[dict[str, Any]]) -> None:
    console.print(table(
        ["model", "params", "input", "recipe", "source"],
        [
            [r["name"], f"{r['params']:,}" if r["params"] is not None else f"n/a: {r['error']}",
             r["input"], f"{r['recipe']['optimizer']} {r['recipe']['lr']:g} {r['recipe']['schedule']}", r["source"]]
            for r in rows
        ],
    ))


def render_evaluate(console: Console, r: Any) -> None:
    deltas = {c["class"]: c["delta_points"] for c in r.comparison["per_class"]} if r.comparison else None
    rows = sorted(r.per_class, key=lambda c: (c["accuracy"] is None, c["accuracy"] or 0.0))
    against = f", change in points against {r.comparison['against']}" if r.comparison else ""
    console.print(f"{r.model} on {r.split} ({r.images:,} images), worst classes first{against}")
    columns = ["class", "support", "accuracy", "precision", "recall", "f1"] + (["Δ points"] if deltas else [])
    console.print(table(columns, [
        [c["class"], c["support"], *("n/a" if c[k] is None else c[k] for k in ("accuracy", "precision", "recall", "f1"))]
        + ([f"{deltas[c['class']]:+.2f}" if deltas[c["class"]] is not None else "n/a"] if deltas else [])
        for c in rows
    ]))
    top5 = f", top-5 {r.top5_accuracy:.4f}" if r.top5_accuracy is not None else ""
    change = f" ({r.comparison['delta_points']:+.2f} points)" if r.comparison else ""
    console.print(
        f"evaluate: accuracy [bold]{r.accuracy:.4f}[/]{change}{top5}, macro F1 {r.macro['f1']:.4f}, "
        f"loss {r.loss:.4f}, ECE {r.ece:.4f}; {r.seconds['inference']:.2f} s inference; wrote {r.path}",
        highlight=False,
    )
    for g in r.gates:
        verdict = "[green]pass[/]" if g["passed"] else "[red]FAIL[/]"
        console.print(f"  gate {g['gate']}: {verdict}: {g['detail']}", highlight=False)


def render_export(console: Console, r: Any) -> None:
    opset = f" (ONNX opset {r.opset})" if r.opset else ""
    triton = f"; Triton repository {r.triton[0].rsplit('/', 1)[0]}/" if r.triton else ""
    console.print(f"export: wrote [bold]{r.ref}[/] from {r.model} at {r.path}: {', '.join(r.formats)}{opset}{triton}")


def _bound(tol: dict[str, Any]) -> str:
    return "none" if tol["atol"] is None else f"{tol['atol']:.0e}/{tol['rtol']:.0e}"


def render_verify(console: Console, r: Any) -> None:
    def shown(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [
        [
            f.format, escape(f.runtime), "[green]pass[/]" if f.passed else "[red]FAIL[/]", shown(f.max_abs_diff, ".1e"),
            shown(f.p99_abs_diff, ".1e"), _bound(f.tolerance), shown(f.top1_agreement, ".2%"), len(f.flipped),
            shown(f.accuracy, ".4f"), shown(f.accuracy_delta_points, "+.2f"),
        ]
        for f in r.formats
    ]
    console.print(
        f"{r.bundle} vs PyTorch ({r.model}) on {r.images} real test images, batch sizes "
        f"{', '.join(map(str, r.batch_sizes))}; PyTorch accuracy {r.reference_accuracy:.4f}"
    )
    console.print(table(
        ["format", "runtime", "verdict", "max abs", "p99 abs", "atol/rtol", "top-1 agree", "flips", "accuracy", "Δ points"],
        rows,
    ))
    if r.integrity != "ok":
        console.print(f"[red]integrity:[/] {r.integrity}", highlight=False)
    for f in r.formats:
        for reason in f.reasons:
            console.print(f"[red]{f.format} ({escape(f.runtime)}):[/] {escape(reason)}", highlight=False)
    verdict = "[green]passed[/]" if r.passed else "[red]FAILED[/]"
    console.print(f"verify: {verdict}; report {r.report_path}")


def render_predict(console: Console, r: Any) -> None:
    console.print(table(
        ["image", "class", "probability", "next"],
        [
            [escape(p["path"]), p["top"][0]["class"], p["top"][0]["probability"],
             ", ".join(f"{t['class']} {t['probability']:.3f}" for t in p["top"][1:])]
            for p in r.predictions
        ],
    ))
    console.print(f"predict: {r.images} images with {r.bundle} on {', '.join(r.providers)}", highlight=False)


def render_bench(console: Console, r: Any) -> None:
    console.print(f"{r.bundle}: input {'x'.join(map(str, r.input_shape))}, {r.threads} CPU threads")
    console.print(table(
        ["runtime", "batch", "calls", "p50 ms", "p99 ms", "images/s"],
        [[row["runtime"], row["batch"], row["calls"], f"{row['p50_ms']:.3f}", f"{row['p99_ms']:.3f}",
          f"{row['images_per_s']:,.0f}"] for row in r.rows],
    ))


def render_ls(console: Console, listing: dict[str, Any]) -> None:
    rows = []
    for store, names in listing.items():
        for name, versions in names.items():
            for v in versions:
                key = next((f"{k} {v[k]:.4f}" for k in ("val_accuracy",) if k in v), "")
                rows.append([store, name, f"v{v['version']}", v["created"], key])
    if not rows:
        console.print("the stores are empty; start with `cnnpipe run`")
        return
    console.print(table(["store", "name", "version", "created", "result"], rows))


def render_show(console: Console, path: Path, m: dict[str, Any]) -> None:
    console.print(f"[bold]{m['name']}@v{m['version']}[/] ({m['stage']}) at {path}, created {m['created']}")
    console.print(table(["path", "role", "bytes", "sha256"], [
        [f["path"], f["role"], f"{f['bytes']:,}", f["sha256"][:16] + "…"] for f in m["files"]
    ]))
    console.print("parents: " + (", ".join(p["ref"] for p in m["lineage"].get("parents", [])) or "none"))
    console.print("results: " + json.dumps(m.get("results", {}))[:400], highlight=False)
