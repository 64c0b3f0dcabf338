"""The network registry as a table: parameter counts for a dataset's input shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.catalog import CATALOG
from ..data.loading import INFO
from ..errors import CnnpipeError
from ..nets.registry import SMALL_NET_RECIPE, build, get_net, net_names, param_count
from ..nets.sources import build_arch, parse
from ..options.training import TrainConfig
from ..store.workspace import Workspace

DEFAULT_DATASET = TrainConfig.dataset  # what train uses when --dataset is not given


def input_shape(dataset: str, root: Path) -> tuple[int, int, int]:
    """(channels, size, classes) of a stored dataset version (what ``train`` would use), or of a
    standard dataset not downloaded yet (its own size)."""
    data = Workspace(root).data
    if dataset in CATALOG and not data.has(dataset):
        spec = CATALOG[dataset]
        return spec.channels, spec.size, len(spec.classes)
    info = data.resolve(dataset).read_json(INFO)
    return info["channels"], info["height"], len(info["classes"])


def list_models(dataset: str | None = None, root: Path = Path("."), arch: str | None = None) -> list[dict[str, Any]]:
    """Every registered network with its parameter count for ``dataset`` (default: each net's own
    dataset), or only ``arch`` (any ``--model`` reference, built and checked on the input: a network
    that cannot take it is a usage error)."""
    if arch is not None and parse(arch).kind != "registry":
        channels, size, classes = input_shape(dataset or DEFAULT_DATASET, root)
        model, source = build_arch(arch, channels, size, classes)
        where = source.distribution or " ".join([source.kind, *([f"sha256 {source.sha256[:12]}"] if source.sha256 else [])])
        return [{
            "name": arch, "params": param_count(model), "error": None, "input": f"{channels}x{size}x{size}, "
            f"{classes} classes", "dataset": dataset or DEFAULT_DATASET, "source": where,
            "recipe": SMALL_NET_RECIPE,
        }]
    rows = []
    for name in [arch] if arch else net_names():
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
