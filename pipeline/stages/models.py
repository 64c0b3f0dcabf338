"""The network registry as a table: parameter counts for a dataset's input shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.catalog import CATALOG
from ..data.loading import INFO
from ..errors import CnnpipeError
from ..nets import build, get_net, net_names, param_count
from ..store import Workspace


def input_shape(dataset: str, root: Path) -> tuple[int, int, int]:
    """(channels, size, classes) of a standard dataset (no download) or of a stored one."""
    if dataset in CATALOG:
        spec = CATALOG[dataset]
        return spec.channels, spec.size, len(spec.classes)
    info = Workspace(root).data.resolve(dataset).read_json(INFO)
    return info["channels"], info["height"], len(info["classes"])


def list_models(dataset: str | None = None, root: Path = Path(".")) -> list[dict[str, Any]]:
    """Every network with its parameter count for ``dataset`` (default: each net's own dataset)."""
    rows = []
    for name in net_names():
        spec = get_net(name)
        channels, size, classes = input_shape(dataset or spec.dataset, root)
        try:
            params, error = param_count(build(name, channels, size, classes)), None
        except CnnpipeError as e:
            params, error = None, str(e)
        rows.append({
            "name": name, "params": params, "error": error, "input": f"{channels}x{size}x{size}, {classes} classes",
            "dataset": dataset or spec.dataset, "source": spec.source, "recipe": spec.recipe,
        })
    return rows
