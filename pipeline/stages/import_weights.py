"""Weights trained elsewhere as a model version: ``cnnpipe import WEIGHTS --model ARCH --dataset REF``.

The file is a ``.safetensors`` file or a PyTorch checkpoint read with
``torch.load(weights_only=True)`` (no code runs): a plain state dict, ``{"state_dict": …}``
or ``{"model": …}``, with the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes
removed. Every key and shape must match the network built for the dataset; the version
then evaluates, exports and verifies like a trained one.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.loading import load_dataset
from ..errors import CnnpipeError, first_line
from ..modelfile import MODEL_JSON, WEIGHTS, describe, load_state
from ..nets.sources import CODE_DIR, build_arch, default_name
from ..provenance import environment, lineage
from ..store import Workspace, check_name, write_json

PREFIXES = ("module.", "_orig_mod.")


@dataclass
class ImportResult:
    """The model version written from an outside weights file."""

    ref: str
    path: str
    source: str
    sha256: str
    params: int


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a weights-only PyTorch checkpoint, prefixes stripped."""
    if not path.is_file():
        raise CnnpipeError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            state: Any = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CnnpipeError(f"{path}: not a readable safetensors weights file ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle that holds code, or not a checkpoint at all
            raise CnnpipeError(f"{path}: not a weights-only PyTorch checkpoint ({type(e).__name__}: {first_line(e)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CnnpipeError(f"{path}: holds no state dict of tensors (plain, 'state_dict' or 'model')")
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def import_weights(weights: Path, arch: str, dataset_ref: str, root: Path = Path("."), name: str | None = None) -> ImportResult:
    """Write a model version of ``arch`` for ``dataset_ref`` holding the weights in ``weights``."""
    name = check_name(name or default_name(arch), "model name")
    ws = Workspace(root)
    dataset = load_dataset(ws.data.resolve(dataset_ref))
    info = dataset.info
    state = read_state(Path(weights))
    model, source = build_arch(arch, info["channels"], info["height"], len(dataset.classes))
    load_state(model, state, weights, shown=10)
    sha256 = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    desc = describe(arch, name, model, dataset, source)
    record = {"imported_from": {"file": Path(weights).name, "sha256": sha256}, "config": {"arch": arch, "name": name},
              "environment": environment()}
    with ws.models.draft(name) as draft:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, draft.path / WEIGHTS, metadata={"arch": arch})
        write_json(draft.path / MODEL_JSON, desc.to_json())
        write_json(draft.path / "train.json", record)
        code = {}
        if source.file:
            (draft.path / CODE_DIR).mkdir()
            shutil.copyfile(arch.rpartition(":")[0], draft.path / source.file)
            code = {source.file: "code"}
        version = draft.commit(
            stage="train",
            roles={WEIGHTS: "weights", MODEL_JSON: "description", "train.json": "config"} | code,
            lineage=lineage([dataset.version], {"import": str(weights), "sha256": sha256, "arch": arch},
                            dataset_hash=dataset.dataset_hash),
            results={"imported_from": sha256, "params": desc.params},
        )
    return ImportResult(ref=version.ref, path=str(version.path), source=str(weights), sha256=sha256, params=desc.params)
