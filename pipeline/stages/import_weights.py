"""Weights trained elsewhere as a model version: ``cnnpipe import WEIGHTS --model ARCH --dataset REF``.

The file is a ``.safetensors`` file or a PyTorch checkpoint read with
``torch.load(weights_only=True)`` (no code runs): a plain state dict, ``{"state_dict": …}``
or ``{"model": …}``, with the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes
removed. Every key and shape must match the network built for the dataset; the version
then evaluates, exports and verifies like a trained one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..data.loading import load_dataset
from ..description import MODEL_JSON
from ..fs import write_json
from ..nets.modelfile import WEIGHTS, describe, load_state, read_state, save_weights
from ..nets.sources import build_arch, default_name, store_code
from ..store.provenance import environment, lineage
from ..store.version import check_name
from ..store.workspace import Workspace


@dataclass
class ImportResult:
    """The model version written from an outside weights file."""

    ref: str
    path: str
    source: str
    sha256: str
    params: int


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
        save_weights(model.state_dict(), draft.path / WEIGHTS, {"arch": arch})
        write_json(draft.path / MODEL_JSON, desc.to_json())
        write_json(draft.path / "train.json", record)
        code = store_code(arch, source, draft.path)
        version = draft.commit(
            stage="train",
            roles={WEIGHTS: "weights", MODEL_JSON: "description", "train.json": "config"} | code,
            lineage=lineage([dataset.version], {"import": str(weights), "sha256": sha256, "arch": arch},
                            dataset_hash=dataset.dataset_hash),
            results={"imported_from": sha256, "params": desc.params},
        )
    return ImportResult(ref=version.ref, path=str(version.path), source=str(weights), sha256=sha256, params=desc.params)
