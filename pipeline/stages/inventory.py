"""What the stores hold (``ls``), and removing what killed writers left behind (``gc``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError
from ..options.commands import GcOptions
from ..store.additions import newest_verdict
from ..store.version import Version
from ..store.workspace import Workspace


def list_stores(root: Path) -> dict[str, Any]:
    """Every version of every name in the data, models and exports stores, by store; a damaged
    version is listed with the reason it cannot be read."""
    ws = Workspace(root)
    if not ws.root.is_dir():  # a typo would otherwise list empty stores
        raise CnnpipeError(f"--root {ws.root}: no such folder; give the folder that holds data/, models/ and exports/")
    def entry(n: int, v: Version | str, exports: bool) -> dict[str, Any]:
        if isinstance(v, str):
            return {"version": n, "damaged": v}
        found = {"version": n, "created": v.manifest.get("created"), **v.results}
        return found | ({"verify": newest_verdict(v)} if exports else {})

    stores = {"data": ws.data, "models": ws.models, "exports": ws.exports}
    return {
        kind: {name: [entry(n, v, kind == "exports") for n, v in store.listing(name)] for name in store.names()}
        for kind, store in stores.items()
    }


def collect_garbage(options: GcOptions, root: Path) -> dict[str, list[str]]:
    """Remove drafts no live process owns (a local root), or versions claimed but never completed
    and unfinished uploads older than ``options.older_than`` hours (object storage)."""
    options.validate()
    return {"removed": Workspace(root).collect_garbage(timedelta(hours=options.older_than))}
