"""Network architectures and their registry."""

from ..nets import cifar, small  # noqa: F401  (they register their networks)
from ..nets.registry import NetSpec, build, get_net, net_names, param_count

__all__ = ["NetSpec", "build", "get_net", "net_names", "param_count"]
