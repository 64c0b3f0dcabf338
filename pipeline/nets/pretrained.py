"""Pretrained weights for ``torchvision:NAME`` and ``timm:NAME``, loaded by the libraries' own code.

torchvision's weights come through ``Weights.get_state_dict`` (torch.hub's cache under
``TORCH_HOME``), timm's through ``timm.create_model(pretrained=True)`` (the Hugging Face cache,
or torch.hub's for weights published by URL). Each gives the state dict of the published network
(its own head and class count) and the weights' preprocessing; the caller loads it into its
network with the head re-initialised for the dataset's classes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import CnnpipeError, first_line
from ..fs import sha256_file
from .libraries import create_timm
from .sources import ArchSource


@dataclass(frozen=True)
class Pretrained:
    """Which published weights a network started from (``model.json``'s ``weights``)."""

    library: str  # torchvision or timm
    name: str  # ResNet18_Weights.IMAGENET1K_V1, resnet10t.c3_in1k
    file: str  # the cached file's name
    sha256: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int  # the side the weights were trained (torchvision: cropped) at
    interpolation: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"mean": list(self.mean), "std": list(self.std)}


def load_pretrained(source: ArchSource, weights: str | None, channels: int,
                    size: int) -> tuple[dict[str, torch.Tensor], Pretrained]:
    """The published state dict of ``source`` (``weights``: a torchvision weights name or a timm tag;
    None: the library's default) with its first convolution fitted to ``channels`` (and, for a timm
    model that takes an input size, its position embeddings resampled to ``size``), and its record."""
    if source.kind == "torchvision":
        state, record = _torchvision(source.name, weights)
    elif source.kind == "timm":
        state, record = _timm(source.name, weights, channels, size)
    else:
        raise CnnpipeError(f"--pretrained takes torchvision:NAME or timm:NAME, not a {source.kind} network")
    return fit_channels(state, channels), record


def _hub_file(url: str) -> Path:
    """Where torch.hub caches the file of ``url`` (``TORCH_HOME``/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _torchvision(name: str, weights: str | None) -> tuple[dict[str, torch.Tensor], Pretrained]:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (KeyError, ValueError):
        raise CnnpipeError(f"torchvision publishes no weights for {name!r}") from None
    choices = [w.name for w in enum]
    short = (weights or "DEFAULT").rpartition(".")[2]  # IMAGENET1K_V1 or ResNet18_Weights.IMAGENET1K_V1
    if short not in (*choices, "DEFAULT"):
        raise CnnpipeError(f"torchvision has no weights {weights!r} for {name}; use one of {', '.join(choices)}")
    chosen = enum.DEFAULT if short == "DEFAULT" else enum[short]
    path = _hub_file(chosen.url)
    try:
        state = chosen.get_state_dict(progress=False)
    except Exception as e:  # offline (URLError), a truncated or foreign file (torch.load refuses it)
        raise CnnpipeError(f"torchvision's {chosen} could not be loaded ({type(e).__name__}: {first_line(e)}): "
                           f"put {path.name} (from {chosen.url}) at {path} (the cache under TORCH_HOME)") from None
    prep = chosen.transforms()
    return state, Pretrained("torchvision", str(chosen), path.name, sha256_file(path), tuple(prep.mean), tuple(prep.std),
                             int(prep.crop_size[0]), str(prep.interpolation.value))


def _timm(name: str, tag: str | None, channels: int, size: int) -> tuple[dict[str, torch.Tensor], Pretrained]:
    try:
        import timm
    except ImportError:
        raise CnnpipeError('timm is not installed: pip install -e ".[timm]"') from None
    base = name.partition(".")[0]
    wanted = name if tag is None else f"{base}.{tag.rpartition('.')[2]}"
    try:
        found = timm.models.get_pretrained_cfg(wanted, allow_unregistered=False)
    except RuntimeError:
        found = None
    if found is None:
        known = timm.list_pretrained(base + ".*")
        raise CnnpipeError(f"timm has no pretrained weights {wanted!r}; use one of {', '.join(known) or 'none'}")
    tagged, cfg = f"{found.architecture}.{found.tag}", found.to_dict()
    where = _timm_file(cfg)
    try:
        model = create_timm(tagged, size, pretrained=True, in_chans=channels)  # as libraries.timm_model builds it
    except Exception as e:  # offline with an empty cache, a corrupt file
        raise CnnpipeError(f"timm's weights {tagged} could not be loaded ({type(e).__name__}: "
                           f"{first_line(e)[:120]}): put {where}") from None
    path = _timm_cached(cfg)
    return model.state_dict(), Pretrained(
        "timm", tagged, path.name if path else "", sha256_file(path) if path else "", tuple(cfg["mean"]), tuple(cfg["std"]),
        int(cfg["input_size"][-1]), str(cfg.get("interpolation", "bicubic")))


def _timm_file(cfg: dict[str, Any]) -> str:
    """Where timm looks for a pretrained config's file, in words."""
    if cfg.get("hf_hub_id"):
        return (f"model.safetensors of the Hugging Face repository {cfg['hf_hub_id']} into the cache under HF_HOME "
                f"(`hf download {cfg['hf_hub_id']}` where there is network)")
    return f"at {_hub_file(cfg['url'])} (from {cfg['url']})"


def _timm_cached(cfg: dict[str, Any]) -> Path | None:
    """The cached file timm loaded, where it can be found."""
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg["hf_hub_id"], filename)
            if isinstance(found, str):
                return Path(found)
        return None
    path = _hub_file(cfg["url"])
    return path if path.is_file() else None


def fit_channels(state: dict[str, torch.Tensor], channels: int) -> dict[str, torch.Tensor]:
    """The first 3-channel convolution's weights made to take ``channels`` inputs as timm's
    ``adapt_input_conv`` does: summed over RGB for one channel, else repeated and rescaled."""
    if channels == 3:
        return state
    for key, weight in state.items():
        if weight.dim() == 4 and weight.shape[1] == 3:
            if channels == 1:
                fitted = weight.sum(dim=1, keepdim=True)
            else:
                fitted = weight.repeat(1, -(-channels // 3), 1, 1)[:, :channels] * (3 / channels)
            return state | {key: fitted}
    return state


def input_stats(record: Pretrained, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The weights' mean and std for ``channels`` inputs (averaged over RGB for one channel)."""
    if channels == len(record.mean):
        return record.mean, record.std
    if channels == 1:
        return (sum(record.mean) / len(record.mean),), (sum(record.std) / len(record.std),)
    return (tuple(record.mean[i % len(record.mean)] for i in range(channels)),
            tuple(record.std[i % len(record.std)] for i in range(channels)))
