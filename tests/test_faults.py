"""Crash safety and concurrency: SIGKILL at random moments, and several writers on one store."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cnnpipe.store.version import MANIFEST, Version, load_version
from cnnpipe.store.workspace import Store, Workspace

from conftest import cli_env, cnnpipe_json

VERSION_DIR = re.compile(r"^v[0-9]+$")


def start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnpipe", "--root", str(root), *args],
        cwd=root, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stores(root: Path) -> list[Store]:
    """The three stores and every model version's nested evaluation store."""
    ws = Workspace(root)
    found = [ws.data, ws.models, ws.exports]
    for version_dir in sorted((root / "models").glob("*/v*")):
        if (version_dir / "eval").is_dir():
            found.append(Store(version_dir / "eval", "evaluate", "evaluation", ""))
    return found


def assert_store_consistent(root: Path) -> int:
    """No visible partial version, ``latest`` names a complete one, every hash matches; returns versions seen."""
    seen = 0
    for store in stores(root):
        for name in store.names():
            name_dir = store.root / name
            for path in name_dir.iterdir():
                if VERSION_DIR.match(path.name):
                    assert (path / MANIFEST).is_file(), f"partial version visible: {path}"
                    load_version(path).rehash()
                    seen += 1
            if (name_dir / "latest").exists():
                latest = store.latest(name)
                assert (latest.path / MANIFEST).is_file()
    return seen


def test_sigkill_at_random_moments_never_leaves_a_partial_version(root_copy: Path):
    rng = random.Random(20261122)
    commands = [["train", "--epochs", "2", "--name", "lenet5"], ["export", "lenet5@v1"]]
    kills, deadline = [], time.monotonic() + 150
    for i in range(6):
        if time.monotonic() > deadline:
            break
        command = commands[i % 2]
        proc = start(root_copy, *command)
        delay = rng.uniform(1.0, 9.0)
        try:
            proc.wait(timeout=delay)
            outcome = f"finished (rc {proc.returncode})"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            outcome = "killed"
        kills.append((command[0], round(delay, 2), outcome))
        assert proc.returncode in (0, -signal.SIGKILL), (kills, proc.stderr.read())
        assert_store_consistent(root_copy)
    assert any(k[2] == "killed" for k in kills), kills
    # The next runs succeed and sweep the drafts the killed writers left.
    trained = cnnpipe_json(root_copy, "train", "--epochs", "1", "--name", "lenet5")
    exported = cnnpipe_json(root_copy, "export", trained["ref"], "--format", "onnx")
    assert cnnpipe_json(root_copy, "verify", exported["ref"])["passed"]
    assert not list((root_copy / "models/lenet5").glob(".tmp-*")), kills
    assert not list((root_copy / "exports/lenet5").glob(".tmp-*")), kills
    assert_store_consistent(root_copy)


def test_concurrent_writers_get_distinct_versions_and_readers_never_see_a_partial_one(root_copy: Path):
    writers = [start(root_copy, "train", "--epochs", "1", "--name", "lenet5", "--seed", str(s)) for s in (1, 2)]
    writers += [start(root_copy, "export", "lenet5@v1", "--format", "onnx") for _ in range(3)]
    reads = 0
    while any(w.poll() is None for w in writers):
        reads += assert_store_consistent(root_copy)  # a reader racing the writers
        listing = subprocess.run(
            [sys.executable, "-m", "cnnpipe", "--root", str(root_copy), "ls", "--json"],
            env=cli_env(), capture_output=True, text=True, timeout=120,
        )
        assert listing.returncode == 0, listing.stderr
    for w in writers:
        assert w.returncode == 0, w.stderr.read()
    ws = Workspace(root_copy)
    assert [v.number for v in ws.models.versions("lenet5")] == [1, 2, 3]
    assert [v.number for v in ws.exports.versions("lenet5")] == [1, 2, 3, 4]
    for bundle in {_contents(b): b for b in ws.exports.versions("lenet5")[1:]}.values():
        assert cnnpipe_json(root_copy, "verify", bundle.ref, "--samples", "64")["passed"], bundle.ref
    assert reads > 0


def _contents(bundle: Version) -> tuple[tuple[str, str], ...]:
    """A bundle's files by path and sha256, once its hashes are checked again: bundles with the same
    files answer alike, so verifying one of them proves them all."""
    bundle.rehash()
    return tuple(sorted((f["path"], f["sha256"]) for f in bundle.manifest["files"]))


MOMENTS = int(os.environ.get("CNNPIPE_FAULT_MOMENTS", "30"))  # 100 and 40 passed in the clean-clone runs before the trims


def test_random_kills_and_interrupts_of_concurrent_writers(root_copy: Path):
    """Four writers of different artifacts at a time, each SIGKILLed or SIGINTed at a random moment
    (MOMENTS in all), beside a witness run that must come through untouched."""
    from conftest import tree_state

    rng = random.Random(20261123)
    writers = [
        ["train", "--epochs", "1", "--name", "alpha"],
        ["train", "--epochs", "1", "--name", "beta", "--model", "dropout-cnn"],
        ["export", "lenet5@v1", "--format", "onnx", "--format", "pt2"],
        ["evaluate", "lenet5@v1"],
    ]
    released = {rel: data for rel, data in tree_state(root_copy).items() if "/v1/" in rel and "/eval/" not in rel}
    witness = start(root_copy, "train", "--epochs", "3", "--name", "witness", "--batch-size", "32")
    moments, deadline = [], time.monotonic() + 420
    while len(moments) < MOMENTS and time.monotonic() < deadline:
        wave = [(start(root_copy, *w), rng.uniform(0.2, 4.0), rng.choice([signal.SIGKILL, signal.SIGINT])) for w in writers]
        began = time.monotonic()
        for (proc, at, sig), command in sorted(zip(wave, writers), key=lambda x: x[0][1]):
            time.sleep(max(0.0, began + at - time.monotonic()))
            if proc.poll() is None:
                proc.send_signal(sig)
            proc.wait(timeout=120)
            moments.append((command[0], command[-1], round(at, 2), sig.name, proc.returncode))
            assert proc.returncode in (0, 130, -signal.SIGINT, -signal.SIGKILL), (moments[-1], proc.stderr.read()[-2000:])
    assert len(moments) >= MOMENTS, f"only {len(moments)} moments within the time bound"
    assert sum(m[4] == -signal.SIGKILL for m in moments) >= MOMENTS // 5
    assert sum(m[4] in (130, -signal.SIGINT) for m in moments) >= MOMENTS // 5

    out, err = witness.communicate(timeout=600)
    assert witness.returncode == 0, err[-2000:]  # no killed or interrupted writer removed its run
    assert_store_consistent(root_copy)
    assert {rel: data for rel, data in tree_state(root_copy).items() if rel in released} == released  # nothing lost
    listing = subprocess.run([sys.executable, "-m", "cnnpipe", "--root", str(root_copy), "ls", "--json"],
                             env=cli_env(), capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "damaged" not in listing.stdout, listing.stderr
    distinct = {_contents(b): b for b in Workspace(root_copy).exports.versions("lenet5")[1:]}
    for bundle in distinct.values():  # every bundle the chaos committed answers like PyTorch
        assert cnnpipe_json(root_copy, "verify", bundle.ref, "--samples", "32")["passed"], bundle.ref
