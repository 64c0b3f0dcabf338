"""A registry of network builders by name, in the style of timm's ``register_model``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import CnnpipeError

Builder = Callable[[int, int, int], nn.Module]  # (channels, size, num_classes) -> module

# Training defaults per family: the seeds' Adam for the small nets, SGD + cosine for the big ones.
SMALL_NET_RECIPE: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "none", "batch_size": 64,
}
SGD_RECIPE: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine", "batch_size": 128,
}


@dataclass(frozen=True)
class NetSpec:
    """A registered network: its builder, the tutorial it comes from, its input and its recipe."""

    name: str
    builder: Builder
    source: str
    channels: int
    size: int
    dataset: str
    recipe: dict[str, Any]


_REGISTRY: dict[str, NetSpec] = {}


def register(
    name: str, *, source: str, channels: int, size: int, dataset: str, recipe: dict[str, Any]
) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(channels, size, num_classes)`` under ``name``; a name registered
    twice is a programming error, raised at import (as torchvision's ``register_model`` does)."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is already registered")
        _REGISTRY[name] = NetSpec(name, builder, source, channels, size, dataset, recipe)
        return builder

    return wrap


def net_names() -> list[str]:
    return sorted(_REGISTRY)


def get_net(name: str) -> NetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CnnpipeError(f"unknown model {name!r}; known models: {', '.join(net_names())}") from None


def build(name: str, channels: int, size: int, num_classes: int) -> nn.Module:
    """Build network ``name`` for inputs of ``channels``×``size``×``size`` and ``num_classes`` outputs."""
    return get_net(name).builder(channels, size, num_classes)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
