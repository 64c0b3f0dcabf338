"""Work in progress belongs to its live writer (an flock it holds), never judged by a PID."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnpipe.store.workspace import Store

from conftest import assert_clean_error, cli_env, cnnpipe, cnnpipe_here

WRITER = """
import sys
from pathlib import Path
from cnnpipe.store import Store
with Store(Path(sys.argv[1]), "train", "model", "").draft("net") as draft:
    (draft.path / "half.bin").write_bytes(b"x" * 1000)
    print(draft.path, flush=True)
    sys.stdin.readline()
"""


def _pid_namespace_works() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True).returncode == 0


def _commit(store: Store) -> int:
    with store.draft("net") as draft:
        (draft.path / "a.txt").write_text("done")
        return draft.commit("train", {}, {"parents": []}, {}).number


@pytest.mark.parametrize("namespace", ["same", "own PID namespace"])
def test_a_live_writers_draft_is_kept_and_a_dead_ones_is_swept(tmp_path: Path, namespace: str):
    prefix: list[str] = []
    if namespace != "same":
        if not _pid_namespace_works():
            pytest.skip("this machine does not permit a new PID namespace (unshare --pid)")
        prefix = ["unshare", "--pid", "--fork", "--kill-child"]  # its PIDs mean nothing out here
    store = Store(tmp_path / "models", "train", "model", "")
    writer = subprocess.Popen(
        [*prefix, sys.executable, "-c", WRITER, str(store.root)],
        env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        draft = Path(writer.stdout.readline().strip())
        assert draft.is_dir() and (draft / "half.bin").is_file()
        assert _commit(store) == 1  # another writer sweeps abandoned drafts first: this one is live
        assert (draft / "half.bin").read_bytes() == b"x" * 1000
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        for _ in range(100):  # --kill-child: the writer inside dies right after unshare
            if not _still_owned(draft):
                break
            time.sleep(0.05)
        assert draft.exists()  # a killed writer cleans nothing up...
        assert _commit(store) == 2
        assert not draft.exists()  # ...the next writer sweeps it
        assert sorted(p.name for p in (store.root / "net").iterdir() if p.name.startswith("v")) == ["v1", "v2"]
    finally:
        writer.kill()


def _still_owned(folder: Path) -> bool:
    from cnnpipe.store.ownership import abandoned

    return not abandoned(folder)


def _start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnpipe", "--root", str(root), *args],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"{what}: the process ended first: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.02)


def test_an_interrupted_run_removes_only_its_own_folder(pipeline_root: Path, tmp_path: Path):
    root = tmp_path / "root"
    shutil.copytree(pipeline_root / "data", root / "data")  # mnist-sample
    slow = ["--model", "dropout-cnn", "--batch-size", "8", "--device", "cpu"]
    cut = _start(root, "train", *slow, "--epochs", "50", "--name", "cut")
    cut_runs = root / "models/cut/.runs"
    _wait_for(lambda: list(cut_runs.glob("*/config.json")), cut, "the first run's folder")
    other = _start(root, "train", *slow, "--epochs", "2", "--name", "other")
    other_runs = root / "models/other/.runs"
    _wait_for(lambda: list(other_runs.glob("*/config.json")), other, "the second run's folder")
    cut.send_signal(signal.SIGINT)  # while the other run has not checkpointed yet
    assert cut.wait(timeout=60) == 130, cut.stderr.read()
    assert not list(cut_runs.glob("*")) or list(cut_runs.glob("*/checkpoint.pt"))  # its own: kept only with a checkpoint
    out, err = other.communicate(timeout=600)
    assert other.returncode == 0, err
    assert (root / "models/other/v1/manifest.json").is_file()


def test_a_run_a_live_process_owns_is_not_resumed(sample_root_cli: Path):
    root = sample_root_cli
    live = _start(root, "train", "--model", "dropout-cnn", "--batch-size", "8", "--epochs", "50", "--name", "busy")
    try:
        _wait_for(lambda: list((root / "models/busy/.runs").glob("*/checkpoint.pt")), live, "a checkpoint")
        run = next((root / "models/busy/.runs").glob("*"))
        assert_clean_error(cnnpipe_here(root, "train", "--resume", "busy"), 2, "still training in a live process")
        assert_clean_error(cnnpipe_here(root, "train", "--resume", str(run)), 2, "in use by another live process")
        assert live.poll() is None  # the refused resume touched nothing of the live run
    finally:
        live.kill()
        live.wait()
    assert (run / "checkpoint.pt").is_file()  # killed: kept for --resume


@pytest.fixture
def sample_root_cli(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    assert cnnpipe(root, "download", "mnist-sample", "--no-plots").returncode == 0
    return root


def test_gc_sweeps_dead_drafts_of_the_evaluation_stores_nested_in_model_versions(root_copy: Path):
    import json

    evals = root_copy / "models/lenet5/v1/eval"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.replace('"net"', '"test"'), str(evals)],
                              env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        draft = Path(writer.stdout.readline().strip())
        assert draft.parent == evals / "test" and draft.name.startswith(".tmp-")
        kept = cnnpipe(root_copy, "gc", "--json")
        assert kept.returncode == 0 and json.loads(kept.stdout)["removed"] == [] and draft.exists()  # live: kept
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        swept = cnnpipe(root_copy, "gc", "--json")
        assert json.loads(swept.stdout)["removed"] == [str(draft)] and not draft.exists()
    finally:
        writer.kill()
