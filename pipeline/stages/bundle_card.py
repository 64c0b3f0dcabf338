"""A bundle's model card and what it shows: made by export from the model version and the evaluation
it pins, and made again by verify, which compares them with the shipped files.

The card (``README.md``) is written from ``model.json``'s records, ``train.json`` and the pinned
evaluation's ``metrics.json``; the curves, metrics and plots are copies. A bundle whose card claims
another accuracy, or carries other markup or instructions, or whose plots or metrics were swapped,
differs from what verify makes again, and fails naming the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ..description import ModelDescription
from ..errors import CnnpipeError
from ..evaluation.card import PLOT_FILES, model_card
from ..store.evaluations import eval_store, latest_evaluation
from ..store.version import Version

SPLIT = "test"  # the split whose evaluation a bundle's card shows


def pin(version: Version) -> dict[str, Any] | None:
    """The newest test evaluation of ``version`` as the export's lineage records it (None: not evaluated)."""
    evaluation = latest_evaluation(version, SPLIT)
    return None if evaluation is None else {"split": SPLIT, "version": evaluation.number,
                                            "manifest_sha256": evaluation.manifest_sha256}


def _pinned(version: Version, pinned: dict[str, Any] | None) -> Version | None:
    if pinned is None:
        return None
    evaluation = eval_store(version).resolve(f"{pinned['split']}@v{pinned['version']}")
    if evaluation.manifest_sha256 != pinned["manifest_sha256"]:
        raise CnnpipeError(f"{evaluation.ref}: its manifest changed since the bundle was exported from it")
    evaluation.rehash()
    return evaluation


def card_files(version: Version, desc: ModelDescription, bundle: dict[str, Any], license: str | None,
               pinned: dict[str, Any] | None) -> dict[str, bytes]:
    """The card and the files it shows, by name in the bundle: the model's curves and the pinned
    evaluation's metrics and plots (copied), and ``README.md`` (written from ``bundle``, the records)."""
    evaluation = _pinned(version, pinned)
    curves = {"curves.png": version} if version.lists("curves.png") else {}  # an imported model has none
    sources = curves | ({p: evaluation for p in ("metrics.json", *PLOT_FILES) if evaluation.lists(p)} if evaluation else {})
    files = {rel: source.file(rel).read_bytes() for rel, source in sources.items()}
    metrics = evaluation.read_json("metrics.json") if evaluation else None
    card = model_card(version.ref, desc, version.read_json("train.json"), metrics, SPLIT, list(sources), bundle, license)
    return files | {"README.md": card.encode()}


def write_card(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write ``card_files``'s files into ``folder`` (a draft); their manifest roles."""
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    return {rel: "model card" if rel == "README.md" else "metrics" if rel.endswith(".json") else "plot" for rel in files}


def fetch_pinned(bundle: Version, source: Version) -> None:
    """Bring the evaluation the bundle's lineage pins into this process's view of the store (from object
    storage: into its cache), where verify's reference worker, which has no object-storage mirror, reads
    it; an evaluation that cannot be had is ``made_card``'s to report."""
    with contextlib.suppress(CnnpipeError, KeyError, TypeError):
        _pinned(source, bundle.manifest.get("lineage", {}).get("config", {}).get("evaluation"))


def made_card(source: Version, desc: ModelDescription, bundle_json: dict[str, Any],
              config: dict[str, Any]) -> dict[str, bytes] | list[str]:
    """What export makes for the card from ``source`` and the evaluation the bundle's lineage ``config``
    pins (in verify's reference worker: the card names a registered network's origin, and the registry
    imports torch), or why it cannot be made."""
    if "evaluation" not in config:
        return ["the manifest pins no evaluation for the model card (exported by an older cnnpipe: export it again)"]
    try:
        return card_files(source, desc, bundle_json, config.get("license"), config["evaluation"])
    except (CnnpipeError, KeyError, TypeError) as e:
        return [f"the model card cannot be made again from {source.ref}'s pinned evaluation ({e})"]


def check_card(bundle: Version, source: Version, expected: dict[str, bytes] | list[str]) -> list[str]:
    """How the bundle's card and the files it shows differ from ``made_card``'s (an empty list: every
    one byte-identical), or why those could not be made."""
    if isinstance(expected, list):
        return expected
    shipped = {f["path"] for f in bundle.manifest.get("files", []) if f.get("role") in ("model card", "metrics", "plot")}
    found = [f"{rel}: missing" for rel in sorted(expected) if rel not in shipped]
    found += [f"{rel}: not made by export from the pinned evaluation" for rel in sorted(shipped - expected.keys())]
    found += [f"{rel}: differs from what export makes from {source.ref} and its pinned evaluation"
              for rel in sorted(expected.keys() & shipped) if bundle.file(rel).read_bytes() != expected[rel]]
    return found
