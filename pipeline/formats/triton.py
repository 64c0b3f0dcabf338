"""A Triton Inference Server model repository around a bundle's ONNX file (``export --layout triton``)."""

from __future__ import annotations

import shutil
from pathlib import Path


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
