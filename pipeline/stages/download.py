"""Stage 1: prepare a dataset by name into the data store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from cnnpipe.data.catalog import get_spec
from cnnpipe.data.loading import INFO, TENSORS
from cnnpipe.provenance import lineage
from cnnpipe.store import Workspace, sha256_file, write_json


@dataclass
class DownloadResult:
    """The dataset version that now holds the data."""

    ref: str
    path: str
    dataset_hash: str
    reused: bool
    counts: dict[str, dict[str, int]]
    mean: list[float]
    std: list[float]


def _content_hash(folder: Path) -> str:
    """sha256 over the sorted (path, sha256) pairs of every file: the dataset's identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def download(name: str = "mnist-sample", root: Path = Path(".")) -> DownloadResult:
    """Prepare dataset ``name`` as a new version, or return the latest if identical."""
    spec = get_spec(name)
    store = Workspace(root).data
    with store.draft(name) as draft:
        prepared = spec.prepare(draft.path / "raw")
        x_train = torch.from_numpy(prepared.splits["train"][0]).float() / 255.0
        mean = x_train.mean(dim=(0, 2, 3)).tolist()
        std = x_train.std(dim=(0, 2, 3)).tolist()
        counts = {
            part: {c: int(n) for c, n in zip(prepared.classes, np.bincount(y, minlength=len(prepared.classes)))}
            for part, (_, y) in prepared.splits.items()
        }
        tensors = {}
        for part, (x, y) in prepared.splits.items():
            tensors[f"x_{part}"] = torch.from_numpy(np.ascontiguousarray(x))
            tensors[f"y_{part}"] = torch.from_numpy(np.ascontiguousarray(y))
        save_file(tensors, draft.path / TENSORS)
        info: dict[str, Any] = {
            "name": name,
            "summary": spec.summary,
            "license": spec.license,
            "classes": prepared.classes,
            "channels": spec.channels,
            "height": spec.size,
            "width": spec.size,
            "flip": spec.flip,
            "mean": mean,
            "std": std,
            "counts": counts,
            "source": prepared.source,
        }
        write_json(draft.path / INFO, info)
        write_json(draft.path / "split.json", prepared.split)
        dataset_hash = _content_hash(draft.path)
        existing = store.versions(name)
        if existing and existing[-1].results.get("dataset_hash") == dataset_hash:
            version, reused = existing[-1], True
        else:
            roles = {TENSORS: "tensors", INFO: "description", "split.json": "split"}
            roles |= {f"raw/{p.name}": "raw" for p in (draft.path / "raw").iterdir()}
            version = draft.commit(
                stage="download",
                roles=roles,
                lineage=lineage([], {"name": name}, seed=prepared.split.get("seed")),
                results={"dataset_hash": dataset_hash, "counts": counts, "mean": mean, "std": std},
            )
            reused = False
    return DownloadResult(
        ref=version.ref,
        path=str(version.path),
        dataset_hash=dataset_hash,
        reused=reused,
        counts=counts,
        mean=mean,
        std=std,
    )
