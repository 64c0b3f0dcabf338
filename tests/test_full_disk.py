"""A real full disk: every stage on a small tmpfs filled to many levels of free bytes and of free inodes.

Each run either commits a complete version (exit 0) or says in one line which destination could
not be written (exit 2) and leaves the store as it was; never a traceback, exit 3 or a C++ abort.
Mounting needs the privilege to mount; where it is not permitted the tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from cnnpipe.store.workspace import Workspace

from conftest import cnnpipe, tree_state

KB = 1024
# stage: (command, the stores it needs, free-byte levels, free-inode levels)
STAGES = {
    "download": (["download", "mnist-sample"], [], [0, 256 * KB, 6000 * KB], [0, 8]),
    "train": (["train", "--epochs", "1", "--name", "lenet5"], ["data"], [0, 64 * KB, 300 * KB], [0, 4]),
    "evaluate": (["evaluate", "lenet5"], ["data", "models"], [0, 32 * KB, 120 * KB], [0, 4]),
    "export": (["export", "lenet5"], ["data", "models"], [0, 600 * KB, 1700 * KB], [0, 16]),
    "verify": (["verify", "lenet5", "--samples", "32"], ["data", "models", "exports"], [0], [0]),
}


def _mount(tmp_path: Path) -> Path:
    point = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,nr_inodes=4096", "tmpfs", str(point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    return point


def _fill(point: Path, free_bytes: int | None, free_inodes: int | None) -> None:
    """Leave exactly ``free_bytes`` (to the block) or ``free_inodes`` on the file system."""
    filler = point / ".filler"
    filler.mkdir()
    if free_inodes is not None:
        for i in range(os.statvfs(point).f_favail - free_inodes):
            (filler / str(i)).touch()
        assert os.statvfs(point).f_favail == free_inodes
    if free_bytes is not None:
        st = os.statvfs(point)
        with open(filler / "bytes", "wb") as f:
            f.truncate(0)
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free_bytes))
        st = os.statvfs(point)
        assert abs(st.f_bavail * st.f_frsize - free_bytes) <= st.f_frsize


def _stores(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree_state(root).items()
            if not k.startswith(".filler") and not k.endswith(("/.lock", "/.owner"))}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("kind", ["bytes", "inodes"])
def test_a_full_disk_at_any_moment_is_one_line_and_keeps_nothing_partial(
    pipeline_root: Path, tmp_path: Path, stage: str, kind: str
):
    command, needs, byte_levels, inode_levels = STAGES[stage]
    outcomes = []
    for level in byte_levels if kind == "bytes" else inode_levels:
        point = _mount(tmp_path)
        try:
            root = point / "root"
            root.mkdir()
            for store in needs:
                shutil.copytree(pipeline_root / store, root / store, symlinks=True)
            _fill(point, level if kind == "bytes" else None, level if kind == "inodes" else None)
            before, folders_before = _stores(root), _folders(root)
            versions_before = _versions(root)
            proc = cnnpipe(root, *command, timeout=300)
            outcomes.append((level, proc.returncode))
            assert proc.returncode in (0, 2), (stage, level, proc.returncode, proc.stderr[-3000:])
            assert "Traceback" not in proc.stderr
            if proc.returncode == 2:
                errors = [line for line in proc.stderr.splitlines() if "error" in line]  # beside progress lines
                assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], (level, proc.stderr)
                assert "cannot write" in errors[0] and str(root) in errors[0], (level, errors[0])  # the destination
                assert _versions(root) == versions_before, (level, "a version was committed after the failure")
                after = _stores(root)
                if "no version was committed; the last checkpoint is kept in" in errors[0]:  # train, to resume
                    kept = {k for k in after if "/.runs/" in k}
                    assert {Path(k).name for k in kept} == {"checkpoint.pt", "config.json"}, kept
                    after = {k: v for k, v in after.items() if k not in kept}
                else:
                    assert "nothing partial was kept" in errors[0], (level, errors[0])
                assert after == before, level
                empty = [d for d in _folders(root) - folders_before if not any((root / d).iterdir())]
                assert not empty, (level, "empty folders were left", empty)
            else:
                new = _versions(root) - versions_before
                assert new or stage == "verify", level
                for ref in new:
                    _check(root, ref)
        finally:
            subprocess.run(["umount", "-l", str(point)], check=False)
    assert any(code == 2 for _, code in outcomes), outcomes  # the smallest level really was too small


def _folders(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and ".filler" not in p.parts}


def _versions(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.glob("*/*/v*") if (p / "manifest.json").exists()} | {
        str(p.relative_to(root)) for p in root.glob("models/*/v*/eval/*/v*") if (p / "manifest.json").exists()}


def _check(root: Path, rel: str) -> None:
    from cnnpipe.store.version import load_version

    load_version(root / rel).rehash()
    assert Workspace(root)  # the store still opens
