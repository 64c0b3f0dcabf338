"""Seeded, stratified splits with exact split sizes."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Split indices of ``labels`` into parts of exactly ``sizes``, each class in proportion.

    Per class, every part but the last gets the floor of its proportional share,
    the remaining places going to the classes with the largest remainders (ties:
    lower class id); the last part takes what is left. Indices within each part are
    sorted, so a split is a plain, reproducible list.
    """
    n = len(labels)
    if sum(sizes.values()) != n:
        raise ValueError(f"split sizes {sizes} do not add up to {n}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    counts = {c: len(pools[c]) for c in classes}
    quota: dict[str, dict[int, int]] = {}
    left = dict(counts)
    *firsts, last = sizes
    for part in firsts:
        size = sizes[part]
        share = {c: counts[c] * size / n for c in classes}
        take = {c: min(int(share[c]), left[c]) for c in classes}
        order = sorted(classes, key=lambda c: (-(share[c] - int(share[c])), c))
        short = size - sum(take.values())
        for c in order:
            if short == 0:
                break
            if take[c] < left[c]:
                take[c] += 1
                short -= 1
        quota[part] = take
        for c in classes:
            left[c] -= take[c]
    quota[last] = left
    out: dict[str, list[np.ndarray]] = {part: [] for part in sizes}
    for c in classes:
        start = 0
        for part in sizes:
            out[part].append(pools[c][start : start + quota[part][c]])
            start += quota[part][c]
    return {part: np.sort(np.concatenate(chunks)) for part, chunks in out.items()}
