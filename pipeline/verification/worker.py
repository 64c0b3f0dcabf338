"""Verify's workers: every shipped file is loaded and run in a child process, never in verify's own.

A fork server (``multiprocessing``'s ``forkserver``, started once per verify) imports torch
and the runtimes before it has run anything; each format is a process forked from it, so a
worker starts in milliseconds and in the state of a fresh process. Before it opens a file of
the bundle the worker confines itself (``sandbox.confine``): it reads only the bundle, the test
images and the runtimes' installation, writes only its own scratch folder (its temporary
folder too), and has no network. It answers with the logits at each batch size, or with
the reason it could not. A crash, ``sys.exit``, ``os.abort`` or a hang ends only the worker:
verify records a failed row with the reason and goes on.
"""

from __future__ import annotations

import atexit
import glob
import importlib.machinery
import multiprocessing
import multiprocessing.forkserver as forkserver
import os
import shutil
import signal
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from ..errors import CnnpipeError, FormatTimeout, first_line

CHUNK = 256  # small activations: larger chunks let glibc's heap high-water creep up per chunk
# imported once by the fork server, so a worker starts in milliseconds; only modules that start no
# Python thread at import (openvino's starts a ThreadPoolExecutor, which may hold an import lock at
# the moment of a fork: the worker then waits on it for ever) and none that do not need to be there
PRELOAD = ["numpy", "torch", "torch._dynamo", "torch.export._trace", "torch._export.serde.serialize",
           "cnnpipe.formats", "cnnpipe.verification.worker", "onnx", "safetensors"]  # torch.export: 3 s a worker
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
               "/etc/localtime", "/etc/passwd", "/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat",
               "/proc/sys/kernel", "/proc/sys/vm", "/sys/devices/system/cpu", "/sys/devices/system/node",
               "/sys/fs/cgroup", "/dev")  # not /proc as a whole: other processes' environments
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri")  # a CUDA runtime opens these for writing and ioctl; written only if present
# where GPU device nodes are, the CUDA driver's init also writes into the process's own /proc entry (cuInit fails
# with error 304 without it; measured on an H200: reads of /proc or /sys were not the cause)
GPU_PROC = "/proc/self"
KEPT_ENV = ("PATH", "LANG", "LC_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "CUDA_", "NVIDIA_", "LD_LIBRARY_PATH",
            "PYTHONHASHSEED", "TORCH_", "PYTORCH_")  # a worker sees no other variable (tokens, keys)
T = TypeVar("T")
EXIT_GRACE = 5.0  # seconds an answered worker has to exit before it is killed (a runtime left running)
LOG_TAIL = 400  # characters of a dead worker's output quoted in its reason
# the fork server reaps its workers itself and warns about those a kill already reaped
warnings.filterwarnings("ignore", message="forkserver: waitpid returned unexpected pid")


@dataclass(frozen=True)
class Images:
    """The first ``count`` uint8 test images of ``path`` (a ``.npy`` file), normalized chunk by chunk
    into float32 NCHW; each chunk is read through a fresh memory map, unmapped again, so memory
    does not grow with the number of images."""

    path: Path
    count: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return self.count

    def chunks(self, batch: int) -> Any:
        """(start, float32 chunk) pairs; a chunk is a whole number of batches."""
        import torch

        from ..data.loading import normalize

        size = max(batch, CHUNK // batch * batch)
        for start in range(0, self.count, size):
            mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
            raw = torch.from_numpy(np.array(mapped[start : min(start + size, self.count)]))
            del mapped  # unmap: the pages read so far no longer count against this process
            yield start, normalize(raw, list(self.mean), list(self.std)).numpy()

    def logits(self, run: Any, batch: int) -> np.ndarray:
        """``run`` (a batch of inputs to its logits) over every image, ``batch`` at a time; a failure names the
        batch size (a runtime may take one batch size and not another)."""
        out = []
        for _, x in self.chunks(batch):
            try:
                out += [run(x[i : i + batch]) for i in range(0, len(x), batch)]
            except CnnpipeError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever the runtime raises is the row's reason
                raise CnnpipeError(f"at batch size {batch}: {type(e).__name__}: {first_line(e)}") from None
        return np.concatenate(out)


@dataclass(frozen=True)
class Job:
    """One format of one bundle on one device: what the worker loads and what it may read."""

    format: str
    path: Path
    device: str
    ctx: Any  # formats.base.LoadContext
    images: Images
    batch_sizes: tuple[int, ...]
    intermediates: np.ndarray | None = None  # images to return an ONNX file's intermediate tensors for


@dataclass
class Answers:
    """What a worker answered: logits by batch size (or ONNX intermediates), and what it found on the way."""

    logits: dict[int, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    providers: list[str] | None = None
    intermediates: dict[str, Any] | None = None


def run_format(job: Job) -> Answers:
    """In a worker: load ``job``'s file in its runtime and run it on every image at each batch size."""
    from ..formats import FORMATS

    runner = FORMATS[job.format].open(job.path, job.device, job.ctx)
    answers = Answers(problems=list(runner.problems), providers=runner.providers)
    if job.intermediates is not None:
        from .localize import onnx_intermediates

        answers.intermediates = onnx_intermediates(job.path, job.intermediates)
    else:
        answers.logits = {b: job.images.logits(runner, b) for b in job.batch_sizes}
    return answers


def _readable(readable: tuple[Path, ...], scratch: Path) -> list[Path]:
    import cnnpipe

    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, *(p for p in sys.path if p and p != os.getcwd())}
    return [*map(Path, SYSTEM_READ), *map(Path, python), Path(cnnpipe.__file__).parent, *readable, scratch]


def _gpu_writable() -> list[Path]:
    """The GPU device nodes of this machine and, where there are any, the process's own /proc entry."""
    nodes = [Path(p) for pattern in GPU_DEVICES for p in glob.glob(pattern)]
    return [*nodes, Path(GPU_PROC)] if nodes else []


def _child(conn: Connection, work: Callable[..., Any], args: tuple[Any, ...], readable: tuple[Path, ...] | None,
           scratch: Path) -> None:
    """The worker's body: confine (unless ``readable`` is None), ``work(*args)``, answer; every failure is an answer too."""
    from .sandbox import confine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the worker
    kept = {k: v for k, v in os.environ.items() if k.startswith(KEPT_ENV)}
    os.environ.clear()
    os.environ.update(kept | dict.fromkeys(("TMPDIR", "TEMP", "TMP", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "HOME"),
                                           str(scratch)))
    tempfile.tempdir = str(scratch)
    log = os.open(scratch / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        writable = [scratch, Path(os.devnull), *_gpu_writable()]
        confinement = None if readable is None else confine(_readable(readable, scratch), writable)
        conn.send(("ok", work(*args), confinement and confinement.describe()))
    except (CnnpipeError, OSError) as e:  # an OSError: a full disk where an export writes
        conn.send(("error", e, None))
    except SystemExit as e:
        conn.send(("error", CnnpipeError(f"{what(work, args)}: it called sys.exit({e.code!r})"), None))
    except BaseException as e:  # noqa: BLE001 - a hostile file may fail in any way: the answer is the reason
        conn.send(("error", CnnpipeError(f"{what(work, args)} failed: {type(e).__name__}: {first_line(e)}"), None))
    finally:
        conn.close()


def what(work: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """What a worker was doing, for its reasons: the file it loaded, or the work's name."""
    job = args[0] if args else None
    return job.path.name if isinstance(job, Job) else work.__name__


class Workers:
    """The fork server of one stage and the workers forked from it (a context manager)."""

    def __enter__(self) -> Workers:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        with _no_main():
            forkserver.ensure_running()  # it imports PRELOAD while the stage goes on with its own work
        self.scratch = Path(tempfile.mkdtemp(prefix="cnnpipe-workers-"))
        self.confinement: str | None = None  # as the last confined worker described it
        self.started: list[Any] = []
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.started:  # one whose answer was never asked for (the stage failed first)
            if process.is_alive():
                process.kill()
                process.join()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def run(self, work: Callable[..., T], args: tuple[Any, ...], timeout: float, label: str,
            readable: tuple[Path, ...] | None) -> T:
        """``work(*args)`` in a fresh worker, confined to reading ``readable`` (None: not confined);
        ``CnnpipeError`` with the reason when it fails, dies or does not answer within ``timeout``
        seconds (it is then killed)."""
        return self.start(work, args, timeout, label, readable).result()

    def start(self, work: Callable[..., T], args: tuple[Any, ...], timeout: float, label: str,
              readable: tuple[Path, ...] | None) -> Pending[T]:
        """``run``, started: the worker works while the caller goes on; ``result()`` waits for it."""
        scratch = Path(tempfile.mkdtemp(prefix="job-", dir=self.scratch))
        ours, theirs = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_child, args=(theirs, work, args, readable, scratch),
                                       name=f"cnnpipe {label}", daemon=True)
        try:
            with _no_main():
                process.start()
        except BaseException:
            ours.close()
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            theirs.close()
        self.started.append(process)
        return Pending(self, process, ours, scratch, label, timeout, time.monotonic() + timeout)


@dataclass
class Pending(Generic[T]):
    """A started worker (``Workers.start``)."""

    workers: Workers
    process: Any
    conn: Connection
    scratch: Path
    label: str
    timeout: float
    end: float

    def result(self) -> T:
        """Its answer, once it comes; ``CnnpipeError`` with the reason when it fails, dies or does not
        answer in time (it is then killed)."""
        try:
            try:
                status, value, confinement = self._wait()
                self.process.join(EXIT_GRACE)  # an answered worker ends by itself, releasing what it registered
            finally:
                if self.process.is_alive():
                    self.process.kill()
                self.process.join()
        finally:
            self.conn.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
        if status == "error":
            raise value
        self.workers.confinement = confinement or self.workers.confinement
        return value

    def _wait(self) -> tuple[str, Any, str | None]:
        while True:
            left = self.end - time.monotonic()
            try:
                if self.conn.poll(min(1.0, max(0.0, left))):
                    return self.conn.recv()
            except (EOFError, OSError):  # it died before it answered
                self.process.join(5)
                raise CnnpipeError(f"{self.label}: its worker ended without an answer ({_how(self.process.exitcode)})"
                                   + _tail(self.scratch / "worker.log")) from None
            if left <= 0:
                self.process.kill()
                raise FormatTimeout(f"{self.label} did not finish within {self.timeout:g} s (--timeout); "
                                    "its worker was stopped")


def _stop_fork_server() -> None:
    """At exit: end the fork server now, not once it has finished importing PRELOAD (it holds this
    process's stdout and stderr open, so whoever reads them would wait for it)."""
    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        with suppress(OSError):  # it ended already: nothing to stop
            os.kill(server._forkserver_pid, signal.SIGKILL)
            server._stop()


atexit.register(_stop_fork_server)


@contextmanager
def _no_main() -> Iterator[None]:
    """Hide the parent's main module while a worker starts: multiprocessing would run the caller's
    script again in the worker (a script without a ``__main__`` guard would start over), and a
    worker needs nothing of it."""
    main = sys.modules["__main__"]
    stub = types.ModuleType("__main__")
    stub.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    sys.modules["__main__"] = stub
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _tail(log: Path) -> str:
    try:
        text = log.read_bytes()[-LOG_TAIL:].decode(errors="replace").strip()
    except OSError:
        return ""
    return f"; its last output: {' | '.join(text.splitlines()[-3:])}" if text else ""
