"""Shared helpers: the real CLI in a subprocess, and a store that has been through the pipeline."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def cli_env() -> dict[str, str]:
    """The environment for a cnnpipe subprocess: no CNNPIPE_ settings; one thread per xdist worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNPIPE_")}
    if "PYTEST_XDIST_WORKER" in env:  # parallel workers share the cores
        env.setdefault("OMP_NUM_THREADS", "1")
    return env | {"PYTHONUNBUFFERED": "1"}


def cnnpipe(root: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m cnnpipe --root ROOT ARGS...`` (``env`` added to the environment) and return the finished process.

    With ``SUITE_TIMES=FILE`` set, each call appends a JSON line (test, command, seconds, exit code)
    to FILE: where the suite's time goes (``benchmarks/suite_times.py`` sums it)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cnnpipe", "--root", str(root), *args],
        cwd=root, env=cli_env() | (env or {}), capture_output=True, text=True, timeout=timeout,
    )
    _record(args, start, proc.returncode)
    return proc


LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("PEAK", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def cnnpipe_peak(root: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, int]:
    """``cnnpipe(root, *args)`` and the peak resident memory, in bytes, of its largest process (the command or a
    worker it waited for). A small launcher starts it: a child forked from this process (torch loaded) would
    count this process's pages."""
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "cnnpipe", "--root", str(root), *args],
                          cwd=root, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    lines = proc.stderr.splitlines()
    peak = int(lines[-1].split()[1]) * 1024
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, "\n".join(lines[:-1]) + "\n"), peak


def _record(args: tuple[str, ...], start: float, code: int, here: bool = False) -> None:
    """With ``SUITE_TIMES=FILE``: one JSON line for a finished cnnpipe call (``here``: run in this process)."""
    if times := os.environ.get("SUITE_TIMES"):
        record = {"test": os.environ.get("PYTEST_CURRENT_TEST", ""), "args": list(args), "here": here,
                  "seconds": round(time.monotonic() - start, 2), "rc": code}
        with open(times, "a") as out:
            out.write(json.dumps(record) + "\n")


def cnnpipe_here(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cnnpipe`` as ``cnnpipe()`` runs it (same arguments, working folder and environment), but in this
    process, through the console entry point (``cnnpipe.cli.main``): for a command the test expects to be
    refused, it gives the same exit code and output without a new interpreter's seconds of importing
    torch. The process's argv, folder, environment, SIGINT handler and warning hook are restored after."""
    from cnnpipe.cli import main

    argv = ["cnnpipe", "--root", str(root), *args]
    saved = sys.argv, os.getcwd(), dict(os.environ), signal.getsignal(signal.SIGINT), warnings.showwarning
    environ = cli_env() | (env or {})
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    start = time.monotonic()
    try:
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(root)
        sys.argv = argv
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, cwd, environ, handler, warnings.showwarning = saved
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        signal.signal(signal.SIGINT, handler)
    code = code if isinstance(code, int) else 1
    _record(args, start, code, here=True)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def cnnpipe_json(root: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run a command with ``--json``; it must succeed and print one JSON document."""
    proc = cnnpipe(root, *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """One clear error: the exit code, the words, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def choices_of(param) -> list[str] | None:
    """The values a typer option accepts, where it is a choice (an Enum, a list of one, or an optional one)."""
    import enum
    import typing

    annotation = param.type_descriptor.annotation
    while typing.get_args(annotation) and not (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return [m.value for m in annotation] if isinstance(annotation, type) and issubclass(annotation, enum.Enum) else None


def resign(version: Path, rel: str) -> None:
    """Update a manifest entry after replacing a file, as a buggy or hostile writer would."""
    manifest_path = version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    data = (version / rel).read_bytes()
    for entry in manifest["files"]:
        if entry["path"] == rel:
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    manifest_path.write_text(json.dumps(manifest, indent=2))


def zip_bomb(archive: Path, member_suffix: str, mib: int) -> None:
    """Replace the archive member ending in ``member_suffix`` by ``mib`` MiB of deflated zeros (a few KB on disk)."""
    new = archive.with_name(archive.name + ".new")
    with zipfile.ZipFile(archive) as a, zipfile.ZipFile(new, "w") as b:
        target = next(m.filename for m in a.infolist() if m.filename.endswith(member_suffix))
        for m in a.infolist():
            if m.filename != target:
                b.writestr(m, a.read(m.filename))
        info = zipfile.ZipInfo(target)
        info.compress_type = zipfile.ZIP_DEFLATED
        with b.open(info, "w", force_zip64=True) as f:
            for _ in range(mib):
                f.write(bytes(1 << 20))
    new.replace(archive)


def tree_state(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, to prove nothing changed (a name's empty ``.lock``
    file, which any writer of that name may create, is not data)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _shared(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str, build: Callable[[Path], Path]) -> Path:
    """A root made by ``build`` once per test session: by the first xdist worker that needs it (the others
    wait and share it)."""
    from filelock import FileLock

    if worker_id == "master":  # not under xdist
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{shared}.lock"):
        if not Path(f"{shared}.built").is_file():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            build(shared)
            Path(f"{shared}.built").touch()
    return shared


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A root that holds mnist-sample@v1, lenet5@v1 and its export bundle lenet5@v1, made by a plain
    ``cnnpipe run`` (its ``--json`` answer is ``pipeline_run``), built once per test session."""
    return _shared(tmp_path_factory, worker_id, "pipeline", _build_pipeline)


def _build_pipeline(root: Path) -> Path:
    proc = cnnpipe(root, "run", "--json")
    assert proc.returncode == 0, proc.stderr
    Path(f"{root}.run.json").write_text(proc.stdout)  # beside the root: not in a test's copy of it
    return root


@pytest.fixture(scope="session")
def aoti_root(pipeline_root: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """``pipeline_root`` and an unsigned bundle lenet5@v2 of pt2 and its AOTInductor package (compiling it
    takes most of a minute: once per session)."""
    def build(root: Path) -> Path:
        shutil.copytree(pipeline_root, root, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*.tmp"))
        proc = cnnpipe(root, "export", "lenet5", "--format", "pt2", "--aoti", "--json")
        assert proc.returncode == 0, proc.stderr
        return root

    return _shared(tmp_path_factory, worker_id, "aoti", build)


@pytest.fixture
def aoti_copy(aoti_root: Path, tmp_path: Path) -> Path:
    """A private copy of ``aoti_root`` that a test may damage."""
    copy = tmp_path / "root"
    shutil.copytree(aoti_root, copy, symlinks=True, ignore=shutil.ignore_patterns(".*.tmp"))
    return copy


@pytest.fixture
def pipeline_run(pipeline_root: Path) -> dict:
    """What the ``cnnpipe run --json`` that built ``pipeline_root`` answered."""
    return json.loads(Path(f"{pipeline_root}.run.json").read_text())


@pytest.fixture
def root_copy(pipeline_root: Path, tmp_path: Path) -> Path:
    """A private copy of ``pipeline_root`` that a test may damage."""
    copy = tmp_path / "root"
    shutil.copytree(pipeline_root, copy, symlinks=True,  # not a report another worker is writing right now
                    ignore=shutil.ignore_patterns(".*.tmp"))
    return copy


def card_snippets_answer(bundle: Path, image: Path, work: Path) -> list[str]:
    """Run every Python snippet of a bundle's model card as written, each in a fresh interpreter, in a copy
    of the bundle holding ``image`` as ``image.png``; the class each printed (each must succeed)."""
    import re

    shutil.copytree(bundle, work)
    shutil.copyfile(image, work / "image.png")
    answers = []
    for code in re.findall(r"```python\n(.*?)\n```", (work / "README.md").read_text(), re.S):
        proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=cli_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (code, proc.stderr[-2000:])
        answers.append(proc.stdout.strip().splitlines()[-1])
    return answers
