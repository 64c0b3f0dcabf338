"""What the terminal shows: progress bars and result tables (rich); plots are in plots.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
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
from rich.text import Text

from ..errors import printable


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
            + (f"  val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}" if "val_loss" in record else "")
            + f"  {record['images_per_s']:,.0f} img/s"
        )


def plain(text: Any) -> str:
    """Text from data (a class or file name) shown as it is: control characters escaped, no rich markup."""
    return escape(printable(text))


def _cell(value: Any) -> Text | str:
    """A table cell: floats with 4 decimals; strings are data, shown as ``plain`` text (a ``Text`` from
    ``Text.from_markup`` carries cnnpipe's own markup)."""
    return value if isinstance(value, Text) else f"{value:.4f}" if isinstance(value, float) else plain(value)


def table(columns: list[str], rows: list[list[Any]]) -> Table:
    """A rich table whose cells never wrap or get cut: ``show`` prints it only where it fits."""
    t = Table()
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right", no_wrap=True)
    for row in rows:
        t.add_row(*map(_cell, row))
    return t


def _fits(console: Console, t: Table) -> bool:
    return Measurement.get(console, console.options.update_width(10_000), t).maximum <= console.width


def show(console: Console, columns: list[str], rows: list[list[Any]]) -> None:
    """``rows`` as a table where its natural width fits the console; else as two tables that each repeat
    the first column; else one block per row (its first cell, then each column's name and value on a
    line): no name, number or header is ever cut."""
    whole = table(columns, rows)
    if _fits(console, whole):
        console.print(whole)
        return
    half = 1 + len(columns) // 2  # the columns after the first, cut in two
    parts = [table([columns[0], *columns[a:b]], [[r[0], *r[a:b]] for r in rows])
             for a, b in ((1, half), (half, len(columns)))]
    if len(columns) > 2 and all(_fits(console, t) for t in parts):
        for t in parts:
            console.print(t)
        return
    for row in rows:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim")
        grid.add_column()
        for name, value in zip(columns[1:], row[1:]):
            grid.add_row(name, _cell(value))
        first = row[0] if isinstance(row[0], Text) else Text(str(row[0]), style="bold")
        console.print(Text.assemble((f"{columns[0]}: ", "dim"), first))
        console.print(Padding(grid, (0, 0, 0, 2), expand=False))


SHOWN_IGNORED = 20  # files an import left out for their extension, named; the rest counted


def render_download(console: Console, r: Any) -> None:
    counts = ", ".join(f"{part} {sum(c.values()):,}" for part, c in r.counts.items())
    verb = "already present as" if r.reused else "wrote"
    console.print(f"download: {verb} [bold]{r.ref}[/] ({counts}) at {r.path}")
    console.print(f"  dataset hash {r.dataset_hash}; mean {r.mean}, std {r.std}", highlight=False)
    for part, came in r.splits_from.items():
        console.print(f"  {part}: {plain(came)}", highlight=False)
    for failure in r.skipped:
        console.print(f"  [yellow]skipped[/] {plain(failure)}", highlight=False)
    for name in r.ignored[:SHOWN_IGNORED]:
        console.print(f"  [yellow]ignored[/] {plain(name)}", highlight=False)
    if len(r.ignored) > SHOWN_IGNORED:
        console.print(f"  [yellow]ignored[/] {len(r.ignored) - SHOWN_IGNORED} more files without an image extension")


def render_train(console: Console, r: Any) -> None:
    compiled = f", compiled (first step {r.compile_s:.1f} s)" if r.compiled else ""
    notes = "".join(
        [
            f", stopped early after epoch {r.epochs_run}" if r.stopped_early else "",
            f", resumed from {r.resumed_from}" if r.resumed_from else "",
            f", {r.world_size} processes" if r.world_size > 1 else "",
            f"; {r.fine_tune}" if r.fine_tune else "",
        ]
    )
    console.print(
        f"train: wrote [bold]{r.ref}[/] at {r.path}: best epoch {r.best_epoch}, "
        f"val accuracy {r.val_accuracy:.4f}, {r.params:,} params, {r.device} {r.precision}{compiled}, "
        f"{r.train_s:.1f} s, {r.images_per_s:,.0f} img/s{notes}"
    )
    for warning in r.warnings:
        console.print(f"  [yellow]warning:[/] {plain(warning)}", highlight=False)


def render_import(console: Console, r: Any) -> None:
    console.print(f"import: wrote [bold]{r.ref}[/] at {r.path} from {r.source} (sha256 {r.sha256[:16]}…), "
                  f"{r.params:,} params", highlight=False)


def render_models(console: Console, rows: list[dict[str, Any]]) -> None:
    show(
        console,
        ["model", "params", "input", "recipe", "source"],
        [
            [r["name"], f"{r['params']:,}" if r["params"] is not None else f"n/a: {r['error']}",
             r["input"], f"{r['recipe']['optimizer']} {r['recipe']['lr']:g} {r['recipe']['schedule']}", r["source"]]
            for r in rows
        ],
    )


def render_evaluate(console: Console, r: Any) -> None:
    deltas = {c["class"]: c["delta_points"] for c in r.comparison["per_class"]} if r.comparison else None
    rows = sorted(r.per_class, key=lambda c: (c["accuracy"] is None, c["accuracy"] or 0.0))
    against = f", change in points against {r.comparison['against']}" if r.comparison else ""
    console.print(f"{r.model} on {r.split} ({r.images:,} images), worst classes first{against}")
    columns = ["class", "support", "accuracy", "precision", "recall", "f1"] + (["Δ points"] if deltas else [])
    show(console, columns, [
        [c["class"], c["support"], *("n/a" if c[k] is None else c[k] for k in ("accuracy", "precision", "recall", "f1"))]
        + ([f"{deltas[c['class']]:+.2f}" if deltas[c["class"]] is not None else "n/a"] if deltas else [])
        for c in rows
    ])
    top5 = f", top-5 {r.top5_accuracy:.4f}" if r.top5_accuracy is not None else ""
    change = f" ({r.comparison['delta_points']:+.2f} points)" if r.comparison else ""
    interval = f" (95% {r.accuracy_interval[0]:.4f} to {r.accuracy_interval[1]:.4f})" if r.accuracy_interval else ""
    console.print(
        f"evaluate: accuracy [bold]{r.accuracy:.4f}[/]{interval}{change}{top5}, macro F1 {r.macro['f1']:.4f}, "
        f"loss {r.loss:.4f}, ECE {r.ece:.4f}; {r.seconds['inference']:.2f} s inference; wrote {r.path}",
        highlight=False,
    )
    for g in r.gates:
        verdict = "[green]pass[/]" if g.passed else "[red]FAIL[/]"
        console.print(f"  gate {g.gate}: {verdict}: {plain(g.detail)}", highlight=False)


def render_export(console: Console, r: Any) -> None:
    opset = f" (ONNX opset {r.opset})" if r.opset else ""
    triton = f"; Triton repository {r.triton[0].rsplit('/', 1)[0]}/" if r.triton else ""
    console.print(f"export: wrote [bold]{r.ref}[/] from {r.model} at {r.path}: {', '.join(r.formats)}{opset}{triton}")
    for fmt, extra in r.not_installed.items():
        console.print(f"  left out {fmt}: its runtime is not installed (pip install \"cnnpipe\\[{extra}]\")")
    for fmt, report in r.quantization.items():
        if report.get("certified"):
            test = report["test"]
            console.print(f"  {fmt}: recipe {report['chosen']} ({report['calibration_images']} calibration images, "
                          f"{len(report['float_nodes'])} layer(s) kept in float): test accuracy {test['accuracy']:.4f}, "
                          f"drop {test['point']:.2f} points (95% bound {test['high']:.2f}, limit {report['limit_points']:g})")


def _bound(tol: dict[str, Any]) -> str:
    return "none" if tol["atol"] is None else f"{tol['atol']:.0e}/{tol['rtol']:.0e}"


def render_verify(console: Console, r: Any) -> None:
    def shown(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [
        [
            f.format, f.runtime, Text.from_markup("[green]pass[/]" if f.passed else "[red]FAIL[/]"), shown(f.max_abs_diff, ".1e"),
            shown(f.p99_abs_diff, ".1e"), _bound(f.tolerance), shown(f.bound_ratio, ".2f"), shown(f.top1_agreement, ".2%"),
            len(f.flipped),
            shown(f.accuracy, ".4f"), shown(f.accuracy_delta_points, "+.2f"),
        ]
        for f in r.formats
    ]
    console.print(
        f"{r.bundle} vs PyTorch ({r.model}) on {r.images} real test images, batch sizes "
        f"{', '.join(map(str, r.batch_sizes))}; PyTorch accuracy {r.reference_accuracy:.4f}"
    )
    show(
        console,
        ["format", "runtime", "verdict", "max abs", "p99 abs", "atol/rtol", "of bound", "top-1 agree", "flips", "accuracy",
         "Δ points"],
        rows,
    )
    if r.integrity != "ok":
        console.print(f"[red]integrity:[/] {r.integrity}", highlight=False)
    for f in r.formats:
        for reason in f.reasons:
            console.print(f"[red]{f.format} ({escape(f.runtime)}):[/] {escape(reason)}", highlight=False)
    for row in r.statements:
        state = ("[green]verifies[/], " + ("passed" if row["passed"] else "failed")) if row["valid"] else "[red]refused[/]"
        console.print(f"statement {row['file']}: {state} {escape(row['reason'])}", highlight=False)
    verdict = "[green]passed[/]" if r.passed else "[red]FAILED[/]"
    console.print(f"verify: {verdict}; report {r.report_path}" + (f"; signed statement {r.statement}" if r.statement else ""))


def render_predict(console: Console, r: Any) -> None:
    show(
        console,
        ["image", "class", "probability", "next"],
        [
            [p["path"], p["top"][0]["class"], p["top"][0]["probability"],
             ", ".join(f"{t['class']} {t['probability']:.3f}" for t in p["top"][1:])]
            for p in r.predictions
        ],
    )
    console.print(f"predict: {r.images} images with {r.bundle} on {', '.join(r.providers)}", highlight=False)


def render_bench(console: Console, r: Any) -> None:
    console.print(f"{r.bundle}: input {'x'.join(map(str, r.input_shape))}, {r.threads} CPU threads")
    show(
        console,
        ["runtime", "batch", "calls", "p50 ms", "p99 ms", "images/s"],
        [[row.runtime, row.batch, row.calls, f"{row.p50_ms:.3f}", f"{row.p99_ms:.3f}", f"{row.images_per_s:,.0f}"]
         for row in r.rows],
    )
    for runtime, reason in r.failed.items():
        console.print(f"[red]{plain(runtime)}: FAIL[/] {plain(reason)}", highlight=False)
    if r.recommended:
        console.print("recommended: " + "; ".join(f"batch {b}: {plain(label)}" for b, label in r.recommended.items()),
                      highlight=False)
    for fmt, reason in r.not_recommended.items():
        console.print(f"  not considered: {fmt}: {plain(reason)}", highlight=False)


def render_ls(console: Console, listing: dict[str, Any]) -> None:
    rows = []
    for store, names in listing.items():
        for name, versions in names.items():
            for v in versions:
                key = next((f"{k} {v[k]:.4f}" for k in ("val_accuracy",) if k in v), "")
                if store == "exports":
                    key = v.get("verify") or "not verified"
                if "damaged" in v:
                    key = "DAMAGED: " + v["damaged"]
                rows.append([store, name, f"v{v['version']}", v.get("created") or "", key])
    if not rows:
        console.print("the stores are empty; start with `cnnpipe run`")
        return
    show(console, ["store", "name", "version", "created", "result"], rows)


def render_show(console: Console, path: Path, m: dict[str, Any]) -> None:
    console.print(f"[bold]{m['name']}@v{m['version']}[/] ({m['stage']}) at {path}, created {m['created']}")
    show(console, ["path", "role", "bytes", "sha256"], [
        [f["path"], f["role"], f"{f['bytes']:,}", f["sha256"][:16] + "…"] for f in m["files"]
    ])
    console.print("parents: " + (", ".join(p["ref"] for p in m["lineage"].get("parents", [])) or "none"))
    console.print("results: " + json.dumps(m.get("results", {}))[:400], highlight=False)
