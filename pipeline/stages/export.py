"""Stage 4: export a model version to ONNX (and fp16/int8 variants), TorchScript, safetensors and pt2
(and its AOTInductor-compiled package)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.loading import load_dataset, normalize
from ..description import MODEL_JSON, ModelDescription
from ..errors import CnnpipeError
from ..formats import FORMATS
from ..formats.base import INPUT_NAME, OUTPUT_NAME, ExportContext, Format
from ..formats.int8 import Int8Refused
from ..formats.triton import triton_config, triton_repository
from ..fs import write_json
from ..nets.modelfile import WEIGHTS, load_model
from ..options.release import ExportOptions
from ..progress import step
from ..store.provenance import lineage
from ..store.version import Version
from ..store.workspace import Workspace
from ..verification.signing import sign
from ..verification.timelimit import DEFAULT_TIMEOUT
from ..verification.worker import Workers
from .bundle_card import card_files, pin, write_card


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
    not_installed: dict[str, str] = field(default_factory=dict)  # formats "all" left out: their pip extra
    signature: str | None = None  # bundle.sig, with --sign-key
    refused: dict[str, str] = field(default_factory=dict)  # variants their gate refused (not written), with the reason
    quantization: dict[str, Any] = field(default_factory=dict)  # the int8 ladder's report, by variant

    @property
    def passed(self) -> bool:
        """False when a variant's gate refused it (exit 1; the rest of the bundle is written)."""
        return not self.refused


def metadata(desc: ModelDescription, model_ref: str, weights_sha256: str) -> dict[str, str]:
    """The str→str metadata every format carries: what a consumer needs to feed the model."""
    inp = desc.input
    return {
        "model_name": desc.name,
        "model_version": model_ref.split("@")[1],
        "arch": desc.arch,
        "classes": json.dumps(list(desc.classes)),
        "mean": json.dumps(list(inp.mean)),
        "std": json.dumps(list(inp.std)),
        "input_shape": json.dumps(inp.shape),
        "layout": inp.layout,
        "pixel_range": json.dumps(list(inp.pixel_range)),
        "normalize": inp.normalize,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "weights_sha256": weights_sha256,
        "precision": "fp32",
        "cnnpipe_version": __version__,
        "torch_version": torch.__version__,
    }


@dataclass
class DatasetSplits:
    """The model's own dataset, read lazily: calibration images and normalized batches of a split (int8's ladder)."""

    ws: Workspace
    desc: ModelDescription
    _arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._arrays:
            self._arrays[split] = load_dataset(self.ws.data.resolve(self.desc.dataset_ref)).arrays(split, mmap=True)
        return self._arrays[split]

    def normalized(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.array(images))
        return normalize(batch, list(self.desc.input.mean), list(self.desc.input.std)).numpy()

    def calibration(self, count: int) -> np.ndarray:
        """The first ``count`` training images, normalized, as float32 NCHW."""
        return self.normalized(self.arrays("train")[0][:count])

    def batches(self, split: str, batch: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(normalized images, labels) of ``split`` in batches, read from the memory map one batch at a time."""
        images, labels = self.arrays(split)
        for i in range(0, len(labels), batch):
            yield self.normalized(images[i : i + batch]), np.asarray(labels[i : i + batch])

    def size(self, split: str) -> int:
        return len(self.arrays(split)[1])


def _copy_code(version: Version, desc: ModelDescription, folder: Path) -> dict[str, str]:
    """The user's file that defines the network travels with the bundle (its sha256 is in model.json)."""
    rel = (desc.source or {}).get("file")
    if not rel:
        return {}
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(version.file(rel), folder / rel)
    return {rel: "code"}


def export_context(
    ws: Workspace, version: Version, model: torch.nn.Module, desc: ModelDescription, opset: int | None, calibration: int,
    recipes: dict[str, str] | None = None,
) -> ExportContext:
    """What every format is written from: the eval-mode network, its metadata and a fixed example
    input, the same for an export and for verify's re-export of it (which passes the bundle's ``recipes``)."""
    weights_sha256 = next(f["sha256"] for f in version.manifest["files"] if f["path"] == WEIGHTS)
    splits = DatasetSplits(ws, desc)
    return ExportContext(
        model=model, meta=metadata(desc, version.ref, weights_sha256), opset=opset,
        example=torch.randn(2, *desc.input.shape, generator=torch.Generator().manual_seed(0)),
        calibration=splits.calibration, dataset=desc.dataset_ref, split_batches=splits.batches, split_size=splits.size,
        calibration_count=calibration, recipes=recipes,
    )


def write_fresh(root: Path, version: Version, meta: dict[str, str], name: str, folder: Path, trust_code: bool) -> Any:
    """In a fresh worker: write format ``name`` of model ``version``, embedding ``meta``, into ``folder``
    (returns its variant record)."""
    model, desc = load_model(version, trust_code=trust_code)
    ctx = replace(export_context(Workspace(root), version, model, desc, None, 1), meta=meta)
    return FORMATS[name].save(ctx, folder / FORMATS[name].file)


def _write_formats(chosen: list[Format], ctx: ExportContext, root: Path, version: Version, folder: Path,
                   trust_code: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Write each chosen format into ``folder`` in order (a ``fresh`` one in a fresh worker); the
    variants' records for ``model.json``, and the variants refused by their gate (int8 beyond its
    limit: not written, the others are) with the reason."""
    variants, refused = {}, {}
    with Workers() if any(spec.fresh for spec in chosen) else nullcontext() as workers:  # a fork server costs seconds
        for i, spec in enumerate(chosen, 1):
            step(f"export: {spec.name} ({i}/{len(chosen)})")
            if spec.fresh:
                record = workers.run(write_fresh, (root, version, dict(ctx.meta), spec.name, folder, trust_code),
                                     DEFAULT_TIMEOUT, f"{spec.name} export", None)
            else:
                try:
                    record = spec.save(ctx, folder / spec.file)
                except Int8Refused as e:
                    ctx.reports[spec.name], refused[spec.name] = e.report, str(e)
                    continue
            if record is not None:
                variants[spec.name] = record
    return variants, refused


def export(
    model_ref: str, options: ExportOptions | None = None, root: Path = Path("."), *, trust_code: bool = False
) -> ExportResult:
    """Export the evaluated weights of ``model_ref`` in eval mode to each format ``options`` asks for.

    ``options`` (``ExportOptions``) names the base formats and the variant flags (fp16 and
    int8 ONNX, the AOTInductor package), the opset, the Triton layout and the number of
    training images that calibrate int8. What each format is and how it is written lives
    in ``cnnpipe.formats``.
    """
    options = options or ExportOptions()
    opset, calibration = options.opset, options.calibration
    chosen = options.chosen()
    ws = Workspace(root)
    version = ws.models.resolve(model_ref)
    model, desc = load_model(version, trust_code=trust_code)
    if any(m.training for m in model.modules()):
        raise CnnpipeError("refusing to export: a module is still in training mode")
    ctx = replace(export_context(ws, version, model, desc, opset, calibration), int8_limit=options.max_int8_drop,
                  gate_on=options.gate_on)
    evaluation = pin(version)  # the card shows this evaluation; verify makes the card again from it
    weights_sha256 = ctx.meta["weights_sha256"]
    triton: list[str] = []
    with ws.exports.draft(version.name) as draft:
        variants, refused = _write_formats(chosen, ctx, root, version, draft.path, trust_code)
        written = [spec.name for spec in chosen if spec.name not in refused]
        if options.layout == "triton":
            config = triton_config(desc.name, INPUT_NAME, OUTPUT_NAME, desc.input.shape, len(desc.classes), max_batch=256)
            triton = triton_repository(draft.path, desc.name, version.number, draft.path / FORMATS["onnx"].file, config)
        files = {f: FORMATS[f].file for f in written}
        roles = {rel: f if rel == FORMATS[f].file else f"{f} data" for f in written for rel in FORMATS[f].files}
        bundle_json = desc.to_json() | {
            "metadata": ctx.meta, "variants": variants, "formats": written, "files": files,
            "onnx_opset": ctx.opset_used, "triton": triton,
        } | ({"quantization": ctx.reports} if ctx.reports else {})
        write_json(draft.path / MODEL_JSON, bundle_json)
        card_roles = write_card(draft.path, card_files(version, desc, bundle_json, options.license, evaluation)) \
            | _copy_code(version, desc, draft.path)
        base = [f for f in written if FORMATS[f].parent is None]
        bundle = draft.commit(
            stage="export",
            roles=roles | {MODEL_JSON: "description"} | card_roles
            | {rel: "triton" for rel in triton},
            lineage=lineage([version], {"formats": base, "opset": opset, **options.flags, "layout": options.layout,
                                        "calibration": calibration if options.int8 else None, "evaluation": evaluation,
                                        "max_int8_drop": options.max_int8_drop if options.int8 else None,
                                        "gate_on": options.gate_on,
                                        "license": options.license}),
            results={"formats": written, "onnx_opset": ctx.opset_used, "weights_sha256": weights_sha256,
                     "triton": triton, "refused": refused},
            packages=tuple(dict.fromkeys(p for f in written for p in FORMATS[f].packages)),
        )
    signature = str(sign(bundle, Path(options.sign_key))) if options.sign_key else None
    return ExportResult(
        ref=bundle.ref, path=str(bundle.path), model=version.ref, formats=written,
        files=files, opset=ctx.opset_used, triton=triton, not_installed=options.not_installed, signature=signature,
        refused=refused, quantization=ctx.reports,
    )
