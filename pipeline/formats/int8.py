"""The int8 ladder: quantization recipes tried in order until one keeps the accuracy limit.

Each rung quantizes ``model.onnx`` to a static int8 QDQ file, calibrated on training images;
it is judged on the validation split (its paired accuracy drop against the fp32 file, with
its 95% bound: ``evaluation.bounds``) and the first rung within ``--max-int8-drop`` is
certified on the test split. The rungs: onnxruntime's static quantization with MinMax,
Entropy and Percentile calibration, per-tensor weights, ``reduce_range`` (only where the CPU
lacks VNNI, whose 8-bit dot products do not saturate), four times the calibration images,
and last NNCF's accuracy control, which puts back in float the layers that cost the most
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnpipeError, GateFailed
from ..evaluation.bounds import Judgement, judge_drop
from .base import INPUT_NAME, ExportContext, quiet

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")  # the operators whose float-kept instances a recipe names
BATCH = 64


class Int8Refused(GateFailed):
    """No rung of the ladder kept the accuracy limit (exit 1); ``report`` says what each rung reached."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Rung:
    """One quantization recipe: onnxruntime's static QDQ with a calibration method, or NNCF."""

    name: str
    engine: str = "onnxruntime"
    method: str = "MinMax"
    per_channel: bool = True
    reduce_range: bool = False
    images_factor: int = 1
    needs_no_vnni: bool = False


RUNGS = (
    Rung("minmax"),  # cnnpipe's recipe before the ladder: MinMax, per-channel weights
    Rung("entropy", method="Entropy"),
    Rung("percentile", method="Percentile"),
    Rung("minmax-per-tensor", per_channel=False),
    Rung("minmax-reduce-range", reduce_range=True, needs_no_vnni=True),
    Rung("minmax-4x-images", images_factor=4),
    Rung("nncf-accuracy-control", engine="nncf"),
)
BY_NAME = {r.name: r for r in RUNGS}


def has_vnni() -> bool:
    """Whether this CPU has 8-bit dot products that do not saturate (AVX-512 VNNI, AVX-VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: reduce_range is not tried
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over batches of normalized images."""

    def __init__(self, images: np.ndarray, batch: int = 32):
        self.batches = iter([{INPUT_NAME: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def float_nodes(source: Any, quantized: Any) -> list[str]:
    """The nodes of ``source`` (an ONNX model) that ``quantized`` left in float: a quantizable operator
    none of whose inputs comes from a DequantizeLinear."""
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in quantized.graph.node}
    return sorted(n.name for n in source.graph.node if n.op_type in QUANTIZED_OPS and n.name in by_name
                  and not any(i in dequantized for i in by_name[n.name].input))


def quantize(rung: Rung, source: Path, target: Path, images: np.ndarray, keep_float: list[str]) -> None:
    """Write ``target``: ``source`` quantized by ``rung`` on ``images``, ``keep_float`` nodes left in float."""
    if rung.engine == "nncf":
        import nncf
        import onnx

        with quiet():
            model = nncf.quantize(onnx.load(str(source)), _nncf_data(images), subset_size=len(images),
                                  ignored_scope=nncf.IgnoredScope(names=keep_float) if keep_float else None)
        onnx.save(model, str(target))
        return
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        with quiet():
            quantize_static(
                str(prepared), str(target), _Reader(images), quant_format=QuantFormat.QDQ,
                per_channel=rung.per_channel, reduce_range=rung.reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, rung.method), nodes_to_exclude=keep_float,
            )


def _nncf_data(images: np.ndarray) -> Any:
    import nncf

    return nncf.Dataset([images[i : i + 1] for i in range(len(images))], lambda x: {INPUT_NAME: x})


def recipe(rung: Rung, images: int, keep_float: list[str]) -> str:
    """The recipe a file embeds: enough to make its bytes again."""
    return json.dumps({"rung": rung.name, "images": images, "float_nodes": keep_float}, sort_keys=True)


def parse_recipe(text: str) -> tuple[Rung, int, list[str]]:
    """A recorded recipe; a CnnpipeError for one cnnpipe does not make."""
    try:
        data = json.loads(text)
        rung, images, keep = BY_NAME[data["rung"]], data["images"], data["float_nodes"]
    except (ValueError, KeyError, TypeError):
        raise CnnpipeError(f"the int8 recipe {text[:80]!r} is not one cnnpipe makes") from None
    if not (isinstance(images, int) and 0 < images <= 1_000_000 and isinstance(keep, list)
            and all(isinstance(n, str) for n in keep) and len(keep) <= 10_000):
        raise CnnpipeError(f"the int8 recipe {text[:80]!r} is not one cnnpipe makes")
    return rung, images, keep


def _right(path: Path, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Which images the ONNX file at ``path`` classifies right (onnxruntime, CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    found = [session.run(None, {INPUT_NAME: x})[0].argmax(1) == y for x, y in batches]
    return np.concatenate(found) if found else np.zeros(0, bool)


@dataclass
class Ladder:
    """One climb: the fp32 file, where rungs are written, the data and the limit."""

    ctx: ExportContext
    source: Path
    folder: Path
    limit: float
    gate_on: str

    def judge(self, path: Path, split: str, fp32_right: np.ndarray) -> tuple[Judgement, float]:
        """The drop of the int8 file at ``path`` against fp32 on ``split``, judged, and its accuracy."""
        right = _right(path, self.ctx.split_batches(split))
        worse, better = int((fp32_right & ~right).sum()), int((right & ~fp32_right).sum())
        return judge_drop(f"int8 accuracy drop on {split}", worse, better, len(right), self.limit, self.gate_on), \
            float(right.mean()) if len(right) else 0.0

    def accuracy_control(self, images: np.ndarray) -> list[str]:
        """NNCF's accuracy control on the validation split: the nodes it puts back in float."""
        import nncf
        import onnx

        model = onnx.load(str(self.source))
        val = [(x, y) for x, y in self.ctx.split_batches("val")]

        def validate(quantized: Any, data: Any) -> tuple[float, list[float]]:
            path = self.folder / "ac-candidate.onnx"
            onnx.save(quantized, str(path))
            batches = list(data)
            right = _right(path, iter(batches))
            ends = np.cumsum([len(y) for _, y in batches])[:-1]
            return float(right.mean()), [float(part.mean()) for part in np.split(right, ends)]  # per item: a batch

        target = self.limit / 2 if self.gate_on == "bound" else self.limit  # its own test is on the point estimate
        with quiet():
            result = nncf.quantize_with_accuracy_control(
                model, _nncf_data(images), nncf.Dataset(val), validate, max_drop=target / 100, subset_size=len(images))
        return float_nodes(model, result)


def climb(ctx: ExportContext, source: Path, target: Path, limit: float, gate_on: str) -> dict[str, Any]:
    """Try the rungs in order; write the first one within ``limit`` on validation to ``target`` and
    certify it on test. Returns the report; raises ``Int8Refused`` when none is within the limit."""
    if ctx.split_size("val") == 0:
        raise CnnpipeError("--int8 chooses its recipe on the validation split, and the dataset has none")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        ladder = Ladder(ctx, source, Path(tmp), limit, gate_on)
        fp32 = {split: _right(source, ctx.split_batches(split)) for split in ("val", "test")}
        tried: list[dict[str, Any]] = []
        for rung in RUNGS:
            if rung.needs_no_vnni and has_vnni():
                tried.append({"rung": rung.name, "skipped": "this CPU has VNNI: its 8-bit dot products do not saturate"})
                continue
            count = min(ctx.calibration_count * rung.images_factor, ctx.split_size("train"))
            images = ctx.calibration(count)
            keep = ladder.accuracy_control(images) if rung.engine == "nncf" else []
            path = Path(tmp) / f"{rung.name}.onnx"
            quantize(rung, source, path, images, keep)
            judged, accuracy = ladder.judge(path, "val", fp32["val"])
            tried.append({"rung": rung.name, "images": count, "float_nodes": keep, "accuracy": accuracy,
                          "drop": judged.as_dict()})
            if judged.passed:
                return _certify(ladder, rung, path, target, images, keep, tried, fp32["test"])
    best = min((t for t in tried if "drop" in t), key=lambda t: t["drop"]["high"])
    report = {"limit_points": limit, "gate_on": gate_on, "tried": tried, "chosen": None}
    raise Int8Refused(f"int8: no quantization recipe keeps the accuracy within {limit:g} points on the validation split "
                      f"(best: {best['rung']}, a drop of {best['drop']['point']:.2f} points, 95% bound "
                      f"{best['drop']['high']:.2f}); no int8 file was written", report)


def _certify(ladder: Ladder, rung: Rung, path: Path, target: Path, images: np.ndarray, keep: list[str],
             tried: list[dict[str, Any]], fp32_test: np.ndarray) -> dict[str, Any]:
    """The chosen rung judged on the test split: written to ``target`` when within the limit there too."""
    judged, accuracy = ladder.judge(path, "test", fp32_test)
    report = {"limit_points": ladder.limit, "gate_on": ladder.gate_on, "tried": tried, "chosen": rung.name,
              "calibration_images": len(images), "calibration_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
              "float_nodes": keep, "test": judged.as_dict() | {"accuracy": accuracy,
                                                               "fp32_accuracy": float(fp32_test.mean())}}
    if not judged.passed:
        raise Int8Refused(f"int8: the {rung.name} recipe kept the limit of {ladder.limit:g} points on the validation split "
                          f"but not on the test split ({judged.reason(' points')}); no int8 file was written", report)
    path.replace(target)
    return report
