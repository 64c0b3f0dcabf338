"""Real downloads against a local HTTP mirror: success, bad checksum, truncation, errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnpipe.data.fetch import fetch
from cnnpipe.errors import ChecksumError, CnnpipeError

from conftest import SHARED, assert_clean_error, tree_state
from mirror import serve

MNIST_TEST = SHARED / "mnist-test"
REAL = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
needs_mnist = pytest.mark.skipif(not MNIST_TEST.is_dir(), reason="../shared/datasets/mnist-test is not here")


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


@pytest.fixture
def mirror_dir(tmp_path: Path) -> Path:
    """A mirror folder: the real MNIST test files and a generated 600-image training set in IDX."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in REAL:
        shutil.copy(MNIST_TEST / name, folder / name)
    rng = np.random.default_rng(0)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(_idx(rng.integers(0, 256, (600, 28, 28))))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(600) % 10))
    return folder


def _resources(folder: Path) -> str:
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", *REAL]
    return json.dumps([[n, hashlib.md5((folder / n).read_bytes()).hexdigest()] for n in names])


def _download(root: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    helper = Path(__file__).parent / "patched_cli.py"
    return subprocess.run(
        [sys.executable, str(helper), _resources(folder), "--root", str(root), "download", "mnist", *args],
        capture_output=True, text=True, timeout=300, cwd=root,
    )


@pytest.fixture
def server(mirror_dir: Path):
    srv, url = serve(mirror_dir)
    yield url
    srv.shutdown()
    srv.server_close()


@needs_mnist
def test_real_mnist_files_fetch_over_http_with_their_published_md5(server: str, tmp_path: Path):
    dest = tmp_path / "dest"
    dest.mkdir()
    for name, md5 in REAL.items():
        got = fetch(name, md5, [f"{server}/ok"], dest)
        assert got.read_bytes() == (MNIST_TEST / name).read_bytes()


@needs_mnist
def test_a_wrong_md5_fails_and_leaves_no_file(server: str, tmp_path: Path):
    name = "t10k-labels-idx1-ubyte.gz"
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ChecksumError, match=f"{name}: no source gave the published file"):
        fetch(name, "0" * 32, [f"{server}/ok"], dest)
    assert list(dest.iterdir()) == []


@needs_mnist
def test_download_mnist_from_an_http_mirror_end_to_end(server: str, mirror_dir: Path, tmp_path: Path):
    proc = _download(tmp_path, mirror_dir, "--mirror", f"{server}/ok", "--val-size", "100", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ref"] == "mnist@v1"
    assert {k: sum(v.values()) for k, v in result["counts"].items()} == {"train": 500, "val": 100, "test": 10000}
    assert result["counts"]["test"]["1"] == 1135 and result["counts"]["val"]["3"] == 10
    version = tmp_path / "data/mnist/v1"
    info = json.loads((version / "dataset.json").read_text())
    assert info["source"]["base_urls"] == [f"{server}/ok"]
    assert (version / "raw/t10k-images-idx3-ubyte.gz").read_bytes() == (MNIST_TEST / "t10k-images-idx3-ubyte.gz").read_bytes()
    split = json.loads((version / "split.json").read_text())
    assert split["seed"] == 0 and len(split["val_indices_in_train"]) == 100
    for png in ("samples.png", "classes.png"):
        assert (version / png).read_bytes()[:4] == b"\x89PNG"
    again = _download(tmp_path, mirror_dir, "--mirror", "http://127.0.0.1:9/unused", "--val-size", "100", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["reused"] is True  # no network needed


@needs_mnist
@pytest.mark.parametrize("kind", ["file-url", "folder"])
def test_download_from_a_file_url_or_a_plain_folder(mirror_dir: Path, tmp_path: Path, kind: str):
    mirror = mirror_dir.as_uri() if kind == "file-url" else str(mirror_dir)
    proc = _download(tmp_path, mirror_dir, "--mirror", mirror, "--val-size", "50", "--no-plots", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"]["val"]["0"] == 5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_mnist
@pytest.mark.parametrize(
    "case, code, needles",
    [
        ("checksum", 1, ["train-images-idx3-ubyte.gz", "md5", "expected", "--mirror"]),
        ("truncated", 1, ["train-images-idx3-ubyte.gz", "truncated", "/short/"]),
        ("server-error", 2, ["train-images-idx3-ubyte.gz", "HTTP 500", "/error/"]),
        ("unreachable", 2, ["train-images-idx3-ubyte.gz", "could not be fetched", "refused"]),
    ],
)
def test_failed_downloads_say_which_file_from_where_and_leave_nothing(
    server: str, mirror_dir: Path, tmp_path: Path, case: str, code: int, needles: list[str]
):
    root = tmp_path / "root"
    root.mkdir()
    if case == "checksum":
        resources = _resources(mirror_dir)
        image = mirror_dir / "train-images-idx3-ubyte.gz"
        data = bytearray(image.read_bytes())
        data[len(data) // 2] ^= 0xFF  # the served bytes no longer match the published md5
        image.write_bytes(bytes(data))
        helper = Path(__file__).parent / "patched_cli.py"
        proc = subprocess.run(
            [sys.executable, str(helper), resources, "--root", str(root), "download", "mnist", "--mirror", f"{server}/ok"],
            capture_output=True, text=True, timeout=300, cwd=root,
        )
    else:
        base = {
            "truncated": f"{server}/short", "server-error": f"{server}/error",
            "unreachable": f"http://127.0.0.1:{_closed_port()}",
        }[case]
        proc = _download(root, mirror_dir, "--mirror", base)
    assert_clean_error(proc, code, *needles)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    leftovers = [p for p in tree_state(root) if not p.endswith(".lock")]
    assert leftovers == [], leftovers


@needs_mnist
@pytest.mark.parametrize(("mode", "message"), [("endless", "cut off past the published 1,648,877 bytes"),
                                               ("liar", "bytes announced, over the published 1,648,877")])
def test_a_mirror_that_sends_more_than_the_published_file_is_cut_off(server: str, tmp_path: Path, mode: str, message: str):
    fname, dest = "t10k-images-idx3-ubyte.gz", tmp_path / "raw"
    dest.mkdir()
    with pytest.raises(ChecksumError, match=message):
        fetch(fname, REAL[fname], [f"{server}/{mode}"], dest)
    assert list(dest.iterdir()) == []  # no partial file


def test_an_unsupported_mirror_scheme_is_a_usage_error(tmp_path: Path):
    with pytest.raises(CnnpipeError, match="unsupported scheme 'ftp'"):
        fetch("x.gz", "0" * 32, ["ftp://example.org/mnist"], tmp_path)
