"""A model version's evaluations: a store of their own inside the version (``models/NAME/vN/eval/<split>/vK/``)."""

from __future__ import annotations

from .version import Version
from .workspace import Store, evaluation_store


def eval_store(version: Version) -> Store:
    """The store of a model version's evaluations, one name per split."""
    return evaluation_store(version.path)


def latest_evaluation(version: Version, split: str = "test") -> Version | None:
    """The newest evaluation of a model version on ``split``, re-checked; None if it has none."""
    store = eval_store(version)
    if not store.has(split):
        return None
    evaluation = store.latest(split)
    evaluation.rehash()
    return evaluation
