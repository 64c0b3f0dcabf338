"""A trained network on disk: ``model.json`` (how to rebuild it) and safetensors weights."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..description import InputSpec, ModelDescription, read_description
from ..errors import CnnpipeError, first_line, interrupt_first
from ..store.version import Version
from .registry import build, param_count
from .sources import ArchSource, rebuild

WEIGHTS = "weights.safetensors"
PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile



def save_weights(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` as safetensors with the header in one canonical form (keys sorted, no
    spaces), so the same weights give the same bytes in every process: the library writes its
    metadata map in a per-process order. The bytes are built in memory, then written by Python."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + data[8 + size :])

def describe(arch: str, name: str, model: nn.Module, dataset: Any, source: ArchSource,
             stats: tuple[list[float], list[float]] | None = None, weights: dict[str, Any] | None = None) -> ModelDescription:
    """The description a consumer needs to rebuild the network and feed it images (``stats``: the mean and
    std it was trained with, default the dataset's; ``weights``: the published weights it started from)."""
    info = dataset.info
    mean, std = stats or (info["mean"], info["std"])
    return ModelDescription(
        arch=arch, name=name, params=param_count(model), classes=tuple(dataset.classes),
        input=InputSpec(info["channels"], info["height"], info["width"], tuple(mean), tuple(std)),
        dataset_ref=dataset.version.ref, dataset_hash=dataset.dataset_hash,
        source=None if source.kind == "registry" else source.to_json(), weights=weights,
    )


def build_from(desc: ModelDescription, version_dir: Path | None = None, trust_code: bool = False) -> nn.Module:
    """A fresh network with the architecture ``desc`` describes (random weights).

    A network from the user's file is rebuilt from the copy inside ``version_dir``, and only
    with ``trust_code``; one from a module or library only if its code is unchanged.
    """
    inp = desc.input
    if desc.source is None:
        return build(desc.arch, inp.channels, inp.height, len(desc.classes))
    source = ArchSource.from_json(desc.source)
    return rebuild(source, desc.arch, version_dir or Path("."), inp.channels, inp.height, len(desc.classes), trust_code)


def read_safetensors(path: Any) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a usage error naming the file if it is not one."""
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        interrupt_first(e)
        raise CnnpipeError(f"{path}: not a readable safetensors weights file ({e})") from None


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a weights-only PyTorch checkpoint, prefixes stripped."""
    if not path.is_file():
        raise CnnpipeError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        state: Any = read_safetensors(path)
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


def load_weights(model: nn.Module, path: Any) -> None:
    """Load safetensors weights into ``model``; every tensor must match by name and shape."""
    load_state(model, read_safetensors(path), path)


def load_state(model: nn.Module, state: dict[str, Any], where: Any, shown: int = 3) -> None:
    """Load ``state`` into ``model``; every tensor must match by name and shape (the first ``shown``
    missing, unexpected and mis-shaped keys are named otherwise)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or extra or wrong:
        raise CnnpipeError(
            f"{where}: weights do not fit the architecture "
            f"(missing {missing[:shown]}, unexpected {extra[:shown]}, wrong shape {wrong[:shown]})"
        )
    # module versions (``_metadata``) are lost in safetensors; they are the rebuilt code's own (MNASNet checks them)
    versioned = OrderedDict(state)
    versioned._metadata = getattr(expected, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(versioned)


def load_model(version: Version, weights: str = WEIGHTS, trust_code: bool = False) -> tuple[nn.Module, ModelDescription]:
    """Rebuild a version's network in eval mode on the CPU, after re-checking its hashes."""
    version.rehash()
    desc = read_description(version)
    model = build_from(desc, version.path, trust_code)
    load_weights(model, version.file(weights))
    return model.eval(), desc


def resolve_device(choice: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; asking for absent CUDA is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise CnnpipeError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    if choice not in ("cpu", "cuda"):
        raise CnnpipeError(f"unknown device {choice!r}; use auto, cpu or cuda")
    return torch.device(choice)
