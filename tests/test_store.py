import json
import multiprocessing
import os
from pathlib import Path

import pytest

from cnnpipe.errors import CnnpipeError
from cnnpipe.store.version import check_name
from cnnpipe.store.workspace import Store


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models", "train", "model", "train one")


def _commit(store: Store, name: str, payload: str) -> int:
    with store.draft(name) as draft:
        (draft.path / "a.txt").write_text(payload)
        (draft.path / "sub").mkdir()
        (draft.path / "sub" / "b.bin").write_bytes(payload.encode() * 3)
        return draft.commit("train", {"a.txt": "text"}, {"parents": []}, {"payload": payload}).number


def test_versions_count_up_latest_moves_and_nothing_is_overwritten(tmp_path: Path):
    store = _store(tmp_path)
    assert _commit(store, "net", "one") == 1
    first = (tmp_path / "models/net/v1/a.txt").read_bytes(), (tmp_path / "models/net/v1/manifest.json").read_bytes()
    assert _commit(store, "net", "two") == 2
    assert ((tmp_path / "models/net/v1/a.txt").read_bytes(), (tmp_path / "models/net/v1/manifest.json").read_bytes()) == first
    assert (tmp_path / "models/net/latest").read_text().strip() == "v2"
    assert store.resolve("net").number == 2
    assert store.resolve("net@latest").number == 2
    assert store.resolve("net@v1").results == {"payload": "one"}
    assert store.resolve(str(tmp_path / "models/net/v1")).number == 1
    manifest = json.loads((tmp_path / "models/net/v2/manifest.json").read_text())
    assert {f["path"]: f["role"] for f in manifest["files"]} == {"a.txt": "text", "sub/b.bin": "other"}
    assert manifest["environment"]["torch"]
    assert [v.number for v in store.versions("net")] == [1, 2]


def test_a_failed_draft_leaves_no_version_and_no_temp_folder(tmp_path: Path):
    store = _store(tmp_path)
    with pytest.raises(RuntimeError):
        with store.draft("net") as draft:
            (draft.path / "half.txt").write_text("half")
            raise RuntimeError("stage failed")
    assert [p.name for p in (tmp_path / "models/net").iterdir()] == [".lock"]  # the name's lock, nothing else
    with pytest.raises(CnnpipeError, match="no model named 'net'"):
        store.resolve("net")


def test_a_folder_without_manifest_is_never_a_version_but_its_number_is_skipped(tmp_path: Path):
    store = _store(tmp_path)
    (tmp_path / "models/net/v1").mkdir(parents=True)
    assert store.versions("net") == []
    with pytest.raises(CnnpipeError, match="does not exist"):
        store.resolve("net@v1")
    assert _commit(store, "net", "x") == 2


def _commit_in_child(args: tuple[str, int]) -> int:
    root, i = args
    return _commit(Store(Path(root) / "models", "train", "model", "train one"), "net", f"p{i}")


def test_concurrent_writers_get_distinct_versions(tmp_path: Path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        numbers = pool.map(_commit_in_child, [(str(tmp_path), i) for i in range(12)])
    assert sorted(numbers) == list(range(1, 13))
    store = _store(tmp_path)
    payloads = {v.results["payload"] for v in store.versions("net")}
    assert payloads == {f"p{i}" for i in range(12)}
    for v in store.versions("net"):
        v.rehash()
    assert store.resolve("net").number == 12


def test_check_names_the_changed_file(tmp_path: Path):
    store = _store(tmp_path)
    _commit(store, "net", "one")
    target = tmp_path / "models/net/v1/sub/b.bin"
    data = bytearray(target.read_bytes())
    data[0] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(CnnpipeError, match=r"b\.bin: sha256 does not match"):
        store.resolve("net").rehash()


def test_symlinked_member_is_refused(tmp_path: Path):
    store = _store(tmp_path)
    _commit(store, "net", "one")
    outside = tmp_path / "outside.txt"
    outside.write_text("one")
    member = tmp_path / "models/net/v1/a.txt"
    member.unlink()
    os.symlink(outside, member)
    with pytest.raises(CnnpipeError, match="symbolic link"):
        store.resolve("net").rehash()


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "a b", "x\x1b[31m", "", "-rf", "a..b"])
def test_unsafe_names_are_refused(bad: str):
    with pytest.raises(CnnpipeError, match="invalid"):
        check_name(bad)


@pytest.mark.parametrize("ref", ["net@v0", "net@3", "net@vx", "net@v1/../v2"])
def test_malformed_versions_are_refused(tmp_path: Path, ref: str):
    store = _store(tmp_path)
    _commit(store, "net", "one")
    with pytest.raises(CnnpipeError):
        store.resolve(ref)
