"""Network architectures: the registry, and references to torchvision, timm and the user's code."""

from . import cifar, small  # noqa: F401  (they register their networks)
from .registry import NetSpec, build, get_net, net_names, param_count

__all__ = ["NetSpec", "build", "get_net", "net_names", "param_count"]
