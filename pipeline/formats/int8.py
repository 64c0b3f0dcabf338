"""The int8 ladder: quantization recipes tried in order until one keeps the accuracy limit.

Each rung quantizes the fp32 file to int8, calibrated on training images; it is judged on
the validation split (its paired accuracy drop against the fp32 file, with its 95% bound:
``evaluation.bounds``) and the first rung within ``--max-int8-drop`` is certified on the
test split. A runtime's module gives its ``Backend``: its rungs in order and how it
quantizes and runs a file. For onnxruntime (``formats.onnx``): static QDQ with MinMax,
Entropy and Percentile calibration, per-tensor weights, ``reduce_range`` (only where the CPU
lacks VNNI, whose 8-bit dot products do not saturate), four times the calibration images;
for OpenVINO (``formats.openvino``): NNCF's performance and mixed presets. Every ladder
ends with NNCF's accuracy control, which puts back in float the layers that cost the most
(asked for half the limit when the gate is on the bound: NNCF stops on its point estimate).

The chosen rung's recipe (its name, the number of calibration images, the layers kept in
float) is embedded in the file, so verify makes the same bytes again from the weights
without searching. No rung within the limit, or one that passes on validation and not on
test: ``Int8Refused`` (exit 1) with the best drop reached and by which rung.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnpipeError, GateFailed
from ..evaluation.bounds import Judgement, judge_drop
from .base import ExportContext, quiet

Batches = Iterable[tuple[np.ndarray, np.ndarray]]


class Int8Refused(GateFailed):
    """No rung of the ladder kept the accuracy limit (exit 1); ``report`` says what each rung reached."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Rung:
    """One quantization recipe; ``options`` are its backend's (calibration method, per-channel, preset...)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    images_factor: int = 1  # times --calibration-images
    needs_no_vnni: bool = False  # tried only on a CPU without VNNI
    accuracy_control: bool = False  # NNCF's accuracy control chooses the layers kept in float

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class Backend:
    """How one runtime's files are quantized and run: ``quantize(rung, source, target, images, keep_float)``
    writes ``target``; ``load``/``save`` read and write the in-memory model NNCF works on; ``right(model,
    batches)`` says which images a model gets right; ``float_nodes(source, quantized)`` names the layers a
    quantized model left in float; ``feed`` is one calibration image as the model's input; ``suffix`` names
    a scratch file."""

    rungs: tuple[Rung, ...]
    quantize: Callable[[Rung, Path, Path, np.ndarray, list[str]], None]
    load: Callable[[Path], Any]
    save: Callable[[Any, Path], None]
    right: Callable[[Any, Batches], np.ndarray]
    float_nodes: Callable[[Any, Any], list[str]]
    feed: Callable[[np.ndarray], Any]
    suffix: str

    def rung(self, name: str) -> Rung:
        """The rung named ``name``; a CnnpipeError for one this backend does not have."""
        found = {r.name: r for r in self.rungs}
        if name not in found:
            raise CnnpipeError(f"the int8 recipe {name[:40]!r} is not one cnnpipe makes")
        return found[name]


def has_vnni() -> bool:
    """Whether this CPU has 8-bit dot products that do not saturate (AVX-512 VNNI, AVX-VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: reduce_range is not tried
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def nncf_data(images: np.ndarray, feed: Callable[[np.ndarray], Any]) -> Any:
    """An NNCF dataset of one image per item."""
    import nncf

    return nncf.Dataset([images[i : i + 1] for i in range(len(images))], feed)


def recipe(rung: Rung, images: int, keep_float: list[str]) -> str:
    """The recipe a file embeds: enough to make its bytes again."""
    return json.dumps({"rung": rung.name, "images": images, "float_nodes": keep_float}, sort_keys=True)


def parse_recipe(backend: Backend, text: str) -> tuple[Rung, int, list[str]]:
    """A recorded recipe; a CnnpipeError for one cnnpipe does not make."""
    try:
        data = json.loads(text)
        name, images, keep = data["rung"], data["images"], data["float_nodes"]
    except (ValueError, KeyError, TypeError):
        raise CnnpipeError(f"the int8 recipe {text[:80]!r} is not one cnnpipe makes") from None
    if not (isinstance(name, str) and isinstance(images, int) and 0 < images <= 1_000_000 and isinstance(keep, list)
            and all(isinstance(n, str) for n in keep) and len(keep) <= 10_000):
        raise CnnpipeError(f"the int8 recipe {text[:80]!r} is not one cnnpipe makes")
    return backend.rung(name), images, keep


def write_int8(name: str, backend: Backend, ctx: ExportContext, source: Path, path: Path) -> tuple[Rung, int, list[str]]:
    """Write variant ``name`` at ``path`` from the fp32 file ``source``: the recipe ``ctx`` records for it
    (verify's re-export), else the ladder's choice (its report goes into ``ctx.reports``)."""
    if ctx.recipes is not None:  # verify's re-export: only what the bundle records
        if name not in ctx.recipes:
            raise CnnpipeError(f"model.json records no int8 recipe for {name}: export it again")
        rung, count, keep = parse_recipe(backend, ctx.recipes[name])
        backend.quantize(rung, source, path, ctx.calibration(count), keep)
        return rung, count, keep
    report = ctx.reports[name] = climb(backend, ctx, source, path)
    return backend.rung(report["chosen"]), report["calibration_images"], report["float_nodes"]


@dataclass
class Ladder:
    """One climb: the runtime, the fp32 model, the data and the limit."""

    backend: Backend
    ctx: ExportContext
    source: Path
    folder: Path

    def judge(self, path: Path, split: str, fp32_right: np.ndarray) -> tuple[Judgement, float]:
        """The drop of the int8 file at ``path`` against fp32 on ``split``, judged, and its accuracy."""
        right = self.backend.right(self.backend.load(path), self.ctx.split_batches(split))
        worse, better = int((fp32_right & ~right).sum()), int((right & ~fp32_right).sum())
        judged = judge_drop(f"int8 accuracy drop on {split}", worse, better, len(right), self.ctx.int8_limit,
                            self.ctx.gate_on)
        return judged, float(right.mean()) if len(right) else 0.0

    def accuracy_control(self, images: np.ndarray) -> list[str]:
        """NNCF's accuracy control on the validation split: the layers it puts back in float."""
        import nncf

        model, val = self.backend.load(self.source), list(self.ctx.split_batches("val"))

        def validate(quantized: Any, data: Any) -> tuple[float, list[float]]:
            batches = list(data)
            right = self.backend.right(quantized, batches)
            ends = np.cumsum([len(y) for _, y in batches])[:-1]
            return float(right.mean()), [float(part.mean()) for part in np.split(right, ends)]  # per item: a batch

        limit = self.ctx.int8_limit
        target = limit / 2 if self.ctx.gate_on == "bound" else limit
        with quiet():
            result = nncf.quantize_with_accuracy_control(
                model, nncf_data(images, self.backend.feed), nncf.Dataset(val, lambda item: self.backend.feed(item[0])),
                validate, max_drop=target / 100, subset_size=len(images))
        return self.backend.float_nodes(model, result)


def climb(backend: Backend, ctx: ExportContext, source: Path, target: Path) -> dict[str, Any]:
    """Try the rungs in order; write the first one within the limit on validation to ``target`` and
    certify it on test. Returns the report; raises ``Int8Refused`` when none is within the limit."""
    if ctx.split_size("val") == 0:
        raise CnnpipeError("--int8 chooses its recipe on the validation split, and the dataset has none")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        ladder = Ladder(backend, ctx, source, Path(tmp))
        fp32 = {split: backend.right(backend.load(source), ctx.split_batches(split)) for split in ("val", "test")}
        tried: list[dict[str, Any]] = []
        for rung in backend.rungs:
            if rung.needs_no_vnni and has_vnni():
                tried.append({"rung": rung.name, "skipped": "this CPU has VNNI: its 8-bit dot products do not saturate"})
                continue
            count = min(ctx.calibration_count * rung.images_factor, ctx.split_size("train"))
            images = ctx.calibration(count)
            keep = ladder.accuracy_control(images) if rung.accuracy_control else []
            path = Path(tmp) / f"{rung.name}{backend.suffix}"
            backend.quantize(rung, source, path, images, keep)
            judged, accuracy = ladder.judge(path, "val", fp32["val"])
            tried.append({"rung": rung.name, "images": count, "float_nodes": keep, "accuracy": accuracy,
                          "drop": judged.as_dict()})
            if judged.passed:
                return _certify(ladder, rung, path, target, images, keep, tried, fp32["test"])
    best = min((t for t in tried if "drop" in t), key=lambda t: t["drop"]["high"])
    report = {"limit_points": ctx.int8_limit, "gate_on": ctx.gate_on, "tried": tried, "chosen": None, "certified": False}
    drop = best["drop"]
    small = "" if drop["verdict"] != "undecided" else (
        f"; {drop['n']:,} validation images cannot show it within the limit" +
        (f" (about {drop['images_needed']:,} would, at the same rates)" if drop["images_needed"] else "") +
        ", or --gate-on point judges the estimate alone")
    raise Int8Refused(f"int8: no quantization recipe keeps the accuracy within {ctx.int8_limit:g} points on the "
                      f"validation split (best: {best['rung']}, a drop of {drop['point']:.2f} points, 95% bound "
                      f"{drop['high']:.2f}{small}); no int8 file was written", report)


def _certify(ladder: Ladder, rung: Rung, path: Path, target: Path, images: np.ndarray, keep: list[str],
             tried: list[dict[str, Any]], fp32_test: np.ndarray) -> dict[str, Any]:
    """The chosen rung judged on the test split: moved to ``target`` (with its companion files) when within
    the limit there too."""
    judged, accuracy = ladder.judge(path, "test", fp32_test)
    ctx = ladder.ctx
    report = {"limit_points": ctx.int8_limit, "gate_on": ctx.gate_on, "tried": tried, "chosen": rung.name,
              "certified": judged.passed,  # False: it kept the limit on validation only, and was not written
              "calibration_images": len(images), "calibration_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
              "float_nodes": keep, "test": judged.as_dict() | {"accuracy": accuracy,
                                                               "fp32_accuracy": float(fp32_test.mean())}}
    if not judged.passed:
        raise Int8Refused(f"int8: the {rung.name} recipe kept the limit of {ctx.int8_limit:g} points on the validation "
                          f"split but not on the test split ({judged.reason(' points')}); no int8 file was written", report)
    for file in path.parent.glob(f"{path.stem}.*"):  # OpenVINO's weights beside its graph
        file.replace(target.with_suffix(file.suffix))
    return report
