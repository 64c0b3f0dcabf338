"""Derived ONNX files: fp16 and int8 (static, calibrated) variants, and a Triton model repository."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .errors import CnnpipeError


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Replace a model's ``metadata_props`` with ``meta``."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows the nodes whose outputs it reads."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise CnnpipeError("the fp16 graph has a cycle or an undefined input; cannot order it")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in runnable]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def to_fp16(source: Path, target: Path, meta: dict[str, str]) -> None:
    """An fp16 copy of an fp32 ONNX model; inputs and outputs stay float32 for its callers."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _toposort(proto.graph)  # the converter puts its input casts after the nodes that read them
    set_metadata(proto, meta)
    onnx.save(proto, str(target))


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over batches of normalized images."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 32):
        self.batches = iter([{input_name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def to_int8(source: Path, target: Path, meta: dict[str, str], input_name: str, calibration: np.ndarray) -> None:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on real normalized images."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise CnnpipeError("--int8 needs calibration images, and the training split is empty")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(target), _Calibration(input_name, calibration),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
    proto = onnx.load(str(target))
    set_metadata(proto, meta)
    onnx.save(proto, str(target))


def triton_config(name: str, input_name: str, output_name: str, shape: list[int], classes: int, max_batch: int) -> str:
    """A Triton ``config.pbtxt`` for an ONNX classifier with a dynamic batch axis."""
    dims = ", ".join(map(str, shape))
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [
  {{
    name: "{input_name}"
    data_type: TYPE_FP32
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "{output_name}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
  }}
]
dynamic_batching {{ }}
"""


def triton_repository(folder: Path, name: str, version: int, onnx_file: Path, config: str) -> list[str]:
    """Write ``triton/<name>/config.pbtxt`` and ``triton/<name>/<version>/model.onnx``; return their paths."""
    model_dir = folder / "triton" / name
    (model_dir / str(version)).mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config)
    shutil.copyfile(onnx_file, model_dir / str(version) / "model.onnx")
    return [f"triton/{name}/config.pbtxt", f"triton/{name}/{version}/model.onnx"]
