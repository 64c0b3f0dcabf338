"""A registry of network builders by name, in the style of timm's ``register_model``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnpipe.errors import CnnpipeError

Builder = Callable[[int, int, int], nn.Module]  # (channels, size, num_classes) -> module


@dataclass(frozen=True)
class NetSpec:
    """A registered network: its builder, where it comes from and the input it was made for."""

    name: str
    builder: Builder
    source: str
    channels: int
    size: int
    dataset: str


_REGISTRY: dict[str, NetSpec] = {}


def register(name: str, *, source: str, channels: int, size: int, dataset: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(channels, size, num_classes)`` under ``name``."""

    def wrap(builder: Builder) -> Builder:
        _REGISTRY[name] = NetSpec(name, builder, source, channels, size, dataset)
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
