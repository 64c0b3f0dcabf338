"""Stage 4: export a model version to ONNX (and fp16/int8 variants), TorchScript, safetensors and pt2
(and its AOTInductor-compiled package)."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from safetensors.torch import save_file
from torch import nn

import cnnpipe
from cnnpipe.aoti import compile_package
from cnnpipe.card import model_card
from cnnpipe.data.loading import load_dataset, normalize
from cnnpipe.errors import CnnpipeError, first_line
from cnnpipe.modelfile import MODEL_JSON, WEIGHTS, load_model
from cnnpipe.onnx_variants import set_metadata, to_fp16, to_int8, triton_config, triton_repository
from cnnpipe.provenance import lineage
from cnnpipe.stages.evaluate import PLOT_FILES, latest_evaluation
from cnnpipe.store import Version, Workspace, write_json

FORMATS = ("onnx", "torchscript", "safetensors", "pt2")
FILES = {
    "onnx": "model.onnx", "onnx-fp16": "model.fp16.onnx", "onnx-int8": "model.int8.onnx",
    "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors", "pt2": "model.pt2",
    "pt2-aoti": "model.aoti.pt2",
}
LAYOUTS = ("flat", "triton")
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportResult:
    """The export bundle written."""

    ref: str
    path: str
    model: str
    formats: list[str]
    files: dict[str, str]
    opset: int | None
    triton: list[str]


def metadata(desc: dict[str, Any], model_ref: str, weights_sha256: str) -> dict[str, str]:
    """The str→str metadata every format carries: what a consumer needs to feed the model."""
    inp = desc["input"]
    return {
        "model_name": desc["name"],
        "model_version": model_ref.split("@")[1],
        "arch": desc["arch"],
        "classes": json.dumps(desc["classes"]),
        "mean": json.dumps(inp["mean"]),
        "std": json.dumps(inp["std"]),
        "input_shape": json.dumps([inp["channels"], inp["height"], inp["width"]]),
        "layout": inp["layout"],
        "pixel_range": json.dumps(inp["pixel_range"]),
        "normalize": inp["normalize"],
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "weights_sha256": weights_sha256,
        "precision": "fp32",
        "cnnpipe_version": cnnpipe.__version__,
        "torch_version": torch.__version__,
    }


def check_onnx_graph(path: Path) -> int:
    """Full ONNX check, a symbolic batch axis, no live Dropout or training-mode BatchNorm; the opset."""
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise CnnpipeError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    external = [t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise CnnpipeError(f"{path}: tensor {external[0]!r} points to external data; a bundle's ONNX must be self-contained")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise CnnpipeError(f"{path}: the ONNX checker rejects the graph ({e})") from None
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        raise CnnpipeError(f"{path}: the batch axis is fixed at {batch.dim_value}, not dynamic")
    for node in graph.graph.node:
        if node.op_type == "Dropout":
            raise CnnpipeError(f"{path}: the graph has a Dropout node {node.name!r}; export in eval mode")
        if node.op_type == "BatchNormalization" and any(
            a.name == "training_mode" and a.i == 1 for a in node.attribute
        ):
            raise CnnpipeError(f"{path}: BatchNormalization {node.name!r} runs in training mode")
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence the exporter's own log lines (its failures reach the user as one error line)."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str], opset: int | None) -> int:
    """ONNX through the dynamo exporter with a dynamic batch axis; returns the opset used.

    The opset is added to ``meta`` (as ``onnx_opset``) before the metadata is embedded, so
    the formats written after ONNX carry it too.
    """
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    try:
        with warnings.catch_warnings(), _quiet_logging():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, external_data=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **kwargs,
            )
    except Exception as e:  # the exporter raises many types; all mean "no ONNX file"
        raise CnnpipeError(f"ONNX export failed{f' at opset {opset}' if opset else ''}: {first_line(e)}") from None
    used = check_onnx_graph(path)
    if opset is not None and used != opset:
        raise CnnpipeError(f"ONNX export failed at opset {opset}: the exporter could only produce opset {used}")
    meta["onnx_opset"] = str(used)
    proto = onnx.load(str(path))
    set_metadata(proto, meta)
    onnx.save(proto, str(path))
    return used


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> Any:
    """A ``torch.export`` program with a dynamic batch axis, saved with the metadata as ``cnnpipe.json``;
    returns the program."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
            torch.export.save(program, str(path), extra_files={"cnnpipe.json": json.dumps(meta)})
    except Exception as e:  # torch.export raises many types; all mean "no pt2 file"
        raise CnnpipeError(f"pt2 export (torch.export) failed: {first_line(e)}") from None
    return program


def calibration_images(ws: Workspace, desc: dict[str, Any], count: int) -> np.ndarray:
    """The first ``count`` training images of the model's own dataset, normalized, as float32 NCHW."""
    dataset = load_dataset(ws.data.resolve(desc["dataset"]["ref"]))
    images, _ = dataset.arrays("train", mmap=True)
    batch = torch.from_numpy(np.array(images[:count]))
    return normalize(batch, desc["input"]["mean"], desc["input"]["std"]).numpy()


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    """A traced TorchScript module; the metadata rides along as the extra file ``cnnpipe.json``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={"cnnpipe.json": json.dumps(meta)})


def write_card(version: Version, desc: dict[str, Any], folder: Path) -> dict[str, str]:
    """Copy the model's curves and its newest test evaluation (metrics, plots) into ``folder``
    and write the model card beside them; returns the roles of the files written."""
    evaluation = latest_evaluation(version, "test")
    sources = {"curves.png": version} | ({p: evaluation for p in ("metrics.json", *PLOT_FILES)} if evaluation else {})
    for rel, source in sources.items():
        shutil.copyfile(source.file(rel), folder / rel)
    metrics = evaluation.read_json("metrics.json") if evaluation else None
    card = model_card(version.ref, desc, version.read_json("train.json"), metrics, "test", list(sources))
    (folder / "README.md").write_text(card)
    return {rel: "metrics" if rel.endswith(".json") else "plot" for rel in sources} | {"README.md": "model card"}


def export(
    model_ref: str,
    formats: list[str] | None = None,
    root: Path = Path("."),
    opset: int | None = None,
    fp16: bool = False,
    int8: bool = False,
    layout: str = "flat",
    calibration: int = 256,
    aoti: bool = False,
) -> ExportResult:
    """Export the evaluated weights of ``model_ref`` in eval mode to each of ``formats``.

    ``fp16`` and ``int8`` add ONNX variants (int8: static quantization calibrated on the
    first ``calibration`` training images); ``aoti`` compiles the pt2 program into an
    AOTInductor package; ``layout="triton"`` adds a Triton model repository holding the
    ONNX file.
    """
    asked = set(FORMATS) if not formats or "all" in formats else set(formats)
    unknown = sorted(asked - set(FORMATS))
    if unknown:
        raise CnnpipeError(f"unknown export format {unknown[0]!r}; use {', '.join(FORMATS)} or all")
    if layout not in LAYOUTS:
        raise CnnpipeError(f"unknown layout {layout!r}; use {' or '.join(LAYOUTS)}")
    if (fp16 or int8 or layout == "triton") and "onnx" not in asked:
        raise CnnpipeError("--fp16, --int8 and --layout triton derive from the ONNX file: add --format onnx")
    if aoti and "pt2" not in asked:
        raise CnnpipeError("--aoti compiles the pt2 program: add --format pt2")
    if calibration < 1:
        raise CnnpipeError(f"--calibration-images must be at least 1, not {calibration}")
    ordered = [f for f in FORMATS if f in asked]  # ONNX first: its opset goes into every format's metadata
    ws = Workspace(root)
    version = ws.models.resolve(model_ref)
    model, desc = load_model(version)
    if any(m.training for m in model.modules()):
        raise CnnpipeError("refusing to export: a module is still in training mode")
    weights_sha256 = next(f["sha256"] for f in version.manifest["files"] if f["path"] == WEIGHTS)
    meta = metadata(desc, version.ref, weights_sha256)
    inp = desc["input"]
    example = torch.randn(2, inp["channels"], inp["height"], inp["width"], generator=torch.Generator().manual_seed(0))
    used_opset, written, triton, program = None, [], [], None
    with ws.exports.draft(version.name) as draft:
        for fmt in ordered:
            path = draft.path / FILES[fmt]
            if fmt == "onnx":
                used_opset = export_onnx(model, example, path, meta, opset)
            elif fmt == "torchscript":
                export_torchscript(model, example, path, meta)
            elif fmt == "pt2":
                program = export_pt2(model, example, path, meta)
            else:
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=meta)
            written.append(fmt)
        onnx_file, variants = draft.path / FILES["onnx"], {}
        if fp16:
            variants["onnx-fp16"] = {"precision": "fp16"}
            to_fp16(onnx_file, draft.path / FILES["onnx-fp16"], meta | variants["onnx-fp16"])
        if int8:
            images = calibration_images(ws, desc, calibration)
            variants["onnx-int8"] = {
                "precision": "int8", "calibration": f"{len(images)} training images of {desc['dataset']['ref']}",
            }
            to_int8(onnx_file, draft.path / FILES["onnx-int8"], meta | variants["onnx-int8"], INPUT_NAME, images)
        for variant in variants:
            check_onnx_graph(draft.path / FILES[variant])
        if aoti:
            variants["pt2-aoti"] = {"compiled_for": compile_package(program, draft.path / FILES["pt2-aoti"], meta)}
        written += list(variants)
        if layout == "triton":
            config = triton_config(
                desc["name"], INPUT_NAME, OUTPUT_NAME, [inp["channels"], inp["height"], inp["width"]],
                len(desc["classes"]), max_batch=256,
            )
            triton = triton_repository(draft.path, desc["name"], version.number, onnx_file, config)
        write_json(draft.path / MODEL_JSON, desc | {
            "metadata": meta, "variants": variants, "formats": written, "files": {f: FILES[f] for f in written},
            "onnx_opset": used_opset, "triton": triton,
        })
        card_roles = write_card(version, desc, draft.path)
        bundle = draft.commit(
            stage="export",
            roles={FILES[f]: f for f in written} | {MODEL_JSON: "description"} | card_roles
            | {rel: "triton" for rel in triton},
            lineage=lineage([version], {"formats": ordered, "opset": opset, "fp16": fp16, "int8": int8,
                                        "aoti": aoti, "layout": layout, "calibration": calibration if int8 else None}),
            results={"formats": written, "onnx_opset": used_opset, "weights_sha256": weights_sha256,
                     "triton": triton},
        )
    return ExportResult(
        ref=bundle.ref, path=str(bundle.path), model=version.ref, formats=written,
        files={f: FILES[f] for f in written}, opset=used_opset, triton=triton,
    )
