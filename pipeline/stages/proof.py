"""What verify and bench make again from a bundle's source model, in workers: the reference logits,
the re-exported files compared with the shipped ones, and the reference's layers.

The source network is rebuilt (the registry's code, torchvision's or timm's, or the user's file or
module, which ``--trust-code`` admitted) only in a worker, never in the stage's own process: a
factory that calls ``sys.exit``, aborts or hangs is a failed verify with its reason. That worker
is not confined (it runs code the user trusts, and torch's exporters write where they like); the
shipped files are loaded only by the confined workers of ``verification.worker``. This module
imports torch only in those workers: verify's own process never does.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..description import MODEL_JSON, ModelDescription, read_bundle_json
from ..errors import CnnpipeError
from ..formats import FORMATS, REEXPORTED
from ..progress import step
from ..store.provenance import environment
from ..store.version import Version
from ..store.workspace import Workspace
from ..verification.localize import compare_layers
from ..verification.reexport import compare_files, compare_reexports, not_exported
from ..verification.timelimit import DEFAULT_TIMEOUT
from ..verification.worker import CHUNK, Images, Pending, Workers
from .bundle_card import fetch_pinned, made_card


@dataclass
class Rebuilt:
    """What the reference worker answers: the source network's logits on the test images (None when
    none were asked for), by format how the shipped files differ from a re-export ([]: identical),
    the metadata an export embeds, the card files export makes (or why it cannot), and the worker's
    torch, CUDA and device. The re-exports of formats that run no code may still be under way in
    their workers (``pending``): ``settle`` waits for them."""

    logits: np.ndarray | None
    reexport: dict[str, list[str]]
    metadata: dict[str, str]  # what the re-exports embedded: made from the source, not read from the bundle
    card: dict[str, bytes] | list[str]
    runtime: dict[str, str | None]  # environment()'s torch, cuda and device, in the worker that ran the network
    pending: dict[str, Pending[list[str]]] = field(default_factory=dict)
    exported_with: str | None = None  # the torch version the bundle's manifest records

    def settle(self) -> dict[str, list[str]]:
        """Every format's differences, once the re-exports still under way have answered."""
        for fmt, pending in self.pending.items():
            self.reexport[fmt] = _answer(pending)
        self.pending = {}
        torch = self.runtime["torch"]
        if any(self.reexport.values()) and self.exported_with != torch:
            hint = (f"(the manifest says torch {self.exported_with}; this is torch {torch}: "
                    "verify where it was exported, or export it again)")
            self.reexport = {f: found + [hint] if found and hint not in found else found
                             for f, found in self.reexport.items()}
        return self.reexport


def _answer(pending: Pending[list[str]]) -> list[str]:
    try:
        return pending.result()
    except CnnpipeError as e:
        return not_exported(e)


def source_model(ws: Workspace, bundle: Version) -> Version:
    """The model version a bundle was exported from, unchanged since (its manifest's sha256)."""
    parents = bundle.manifest.get("lineage", {}).get("parents", [])
    if not parents:
        raise CnnpipeError(f"{bundle.ref}: the manifest names no source model")
    source = ws.models.resolve(parents[0]["ref"])
    if source.manifest_sha256 != parents[0]["manifest_sha256"]:
        raise CnnpipeError(f"{source.ref}: its manifest changed since {bundle.ref} was exported from it")
    return source


def rederive(ws: Workspace, bundle: Version, source: Version, formats: list[str], images: Images | None,
             trust_code: bool, workers: Workers, timeout: float = DEFAULT_TIMEOUT, settle: bool = True,
             card: tuple[ModelDescription, dict[str, Any]] | None = None) -> Rebuilt:
    """The reference logits on ``images`` and the re-export comparison of ``formats`` (those the format
    table marks ``reexported``; a ``fresh`` one in a fresh worker of its own, started first); a re-export
    that fails counts as a difference, a network that cannot be rebuilt is a ``CnnpipeError``. With
    ``settle`` False, the fresh re-exports of formats that run no code may still be ``pending``. With
    ``card`` (the source model's description and the bundle's ``model.json``), the card files export makes
    are made too."""
    step(f"re-deriving from {source.ref}: the reference network, and {len(formats)} format(s) exported again")
    config = bundle.manifest.get("lineage", {}).get("config", {})
    settings = (*(value if isinstance(value, int) else default
                  for value, default in ((config.get("opset"), None), (config.get("calibration"), 1))), _recipes(bundle))
    fresh = [f for f in REEXPORTED if f in formats and FORMATS[f].fresh]
    started = {fmt: workers.start(compare_fresh, (ws.root, source, fmt, bundle.path, trust_code), timeout,
                                  f"{fmt} re-export", (bundle.path, source.path)) for fmt in fresh}  # alongside
    if card is not None:
        fetch_pinned(bundle, source)  # the worker reads the evaluation from this process's cache of the store
    card_config = None if card is None else (*card, config)
    rebuilt = workers.run(_reference, (ws.root, source, bundle.path, formats, images, settings, trust_code, card_config),
                          timeout, f"{source.ref}'s reference network", None)
    rebuilt.reexport |= {fmt: _answer(pending) for fmt, pending in started.items() if FORMATS[fmt].runs_code}  # first
    rebuilt.pending = {f: p for f, p in started.items() if not FORMATS[f].runs_code}
    rebuilt.exported_with = bundle.manifest.get("environment", {}).get("torch")
    if settle:
        rebuilt.settle()
    return rebuilt


def _recipes(bundle: Version) -> dict[str, str]:
    """The recipes the bundle's variants record (the int8 ladder's choice): re-exported as recorded, not searched for."""
    try:
        variants = read_bundle_json(bundle).get("variants", {})
    except CnnpipeError:  # verify's verdict already says so
        return {}
    return {f: v["recipe"] for f, v in variants.items() if isinstance(v, dict) and isinstance(v.get("recipe"), str)}


def _reference(root: Path, source: Version, bundle: Path, formats: list[str], images: Images | None,
               settings: tuple[int | None, int, dict[str, str]], trust_code: bool,
               card: tuple[ModelDescription, dict[str, Any], dict[str, Any]] | None) -> Rebuilt:
    """In a worker: rebuild the source network, run it on the images, export the formats again (with the
    bundle's opset and number of calibration images) and compare; with the metadata the exports embedded,
    the card files export makes (with ``card``: the bundle's description, model.json and lineage config)
    and this worker's torch, CUDA and device."""
    from ..nets.modelfile import load_model
    from .export import export_context

    model, desc = load_model(source, trust_code=trust_code)
    pristine = copy.deepcopy(model)  # re-exported as export saw it: before any forward pass (a module may cache on its first)
    logits = None if images is None else images.logits(_forward(model), CHUNK)
    ctx = export_context(Workspace(root), source, pristine, desc, *settings)
    found = compare_reexports(ctx, bundle, [f for f in formats if not FORMATS[f].fresh])
    made = [] if card is None else made_card(source, *card)
    runtime = {k: None if v is None else str(v)  # plain str: torch.__version__ would bring torch into verify's process
               for k, v in environment().items() if k in ("torch", "cuda", "device")}
    return Rebuilt(logits, found, {k: str(v) for k, v in ctx.meta.items()}, made, runtime)


def _forward(model: Any) -> Any:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def compare_fresh(root: Path, source: Version, fmt: str, bundle: Path, trust_code: bool) -> list[str]:
    """In a fresh, confined worker: write ``fmt`` again into the worker's scratch folder and compare."""
    from .export import write_fresh

    made = Path(tempfile.mkdtemp())
    write_fresh(root, source, _bundle_metadata(bundle, fmt), fmt, made, trust_code)
    return compare_files(fmt, bundle, made)


def _bundle_metadata(bundle: Path, fmt: str) -> dict[str, str]:
    """The metadata ``model.json`` says the bundle's formats embed: a fresh re-export embeds it too
    (verify compares it with what the reference worker's exports embedded)."""
    meta = json.loads((bundle / MODEL_JSON).read_text()).get("metadata")
    if not isinstance(meta, dict):
        raise CnnpipeError(f"{MODEL_JSON}: metadata is missing, so {fmt} cannot be exported again")
    return {str(k): str(v) for k, v in meta.items()}


def reference_layers(source: Version, found: dict[str, Any], x: np.ndarray, limit: float, trust_code: bool) -> dict[str, Any]:
    """In a worker: the rebuilt source network's layers compared with an ONNX file's intermediate tensors."""
    from ..nets.modelfile import load_model

    model, _ = load_model(source, trust_code=trust_code)
    return compare_layers(found, model, x, limit)

