import gzip
from pathlib import Path

import numpy as np
import pytest

from cnnpipe.data.idx import read_idx
from cnnpipe.data.split import stratified_split
from cnnpipe.errors import CnnpipeError


def test_stratified_split_is_exact_proportional_disjoint_and_seeded():
    rng = np.random.default_rng(1)
    labels = rng.choice(4, size=1003, p=[0.5, 0.3, 0.15, 0.05])
    sizes = {"val": 101, "test": 202, "train": 700}
    parts = stratified_split(labels, sizes, seed=7)
    assert {k: len(v) for k, v in parts.items()} == sizes
    everything = np.concatenate(list(parts.values()))
    assert sorted(everything.tolist()) == list(range(1003))
    for part, idx in parts.items():
        for c in range(4):
            expected = (labels == c).sum() * sizes[part] / 1003
            assert abs((labels[idx] == c).sum() - expected) <= 1.0, (part, c)
    again = stratified_split(labels, sizes, seed=7)
    other = stratified_split(labels, sizes, seed=8)
    assert all(np.array_equal(parts[k], again[k]) for k in sizes)
    assert not np.array_equal(parts["val"], other["val"])


def test_stratified_split_rejects_sizes_that_do_not_add_up():
    with pytest.raises(ValueError):
        stratified_split(np.zeros(10, dtype=int), {"a": 3, "b": 3}, seed=0)


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_read_idx_round_trips_and_rejects_damage(tmp_path: Path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(_idx_bytes(arr)))
    assert np.array_equal(read_idx(good), arr)

    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(_idx_bytes(arr)[:-5])
    with pytest.raises(CnnpipeError, match="truncated"):
        read_idx(short)

    bad_magic = tmp_path / "magic-idx3-ubyte"
    bad_magic.write_bytes(b"\x01\x02" + _idx_bytes(arr)[2:])
    with pytest.raises(CnnpipeError, match="magic"):
        read_idx(bad_magic)

    broken_gzip = tmp_path / "broken.gz"
    broken_gzip.write_bytes(gzip.compress(_idx_bytes(arr))[:20])
    with pytest.raises(CnnpipeError, match="cannot read"):
        read_idx(broken_gzip)
