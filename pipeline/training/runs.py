"""Training runs on disk: the run folder a live process owns, its checkpoint after every epoch,
and finding and loading an interrupted run to resume (weights only, no code)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..errors import CnnpipeError
from ..fs import STORAGE_ERRNOS, write_json, write_through_memory, writing
from ..options.training import TrainConfig
from ..store.ownership import abandoned, owned
from ..store.version import check_name
from ..store.workspace import Workspace

CHECKPOINT = "checkpoint.pt"
RUN_CONFIG = "config.json"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Replace the run's checkpoint atomically (written in memory first, fsynced, then renamed)."""
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    try:
        write_through_memory(tmp, lambda f: torch.save(state, f))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / CHECKPOINT)
    finally:
        tmp.unlink(missing_ok=True)


def snapshot(obj: Any) -> Any:
    """A copy of a checkpoint's state that training can no longer change: tensors copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes a run's checkpoints in a background thread, one at a time, so the next epoch trains meanwhile.

    ``write`` waits for the previous write; ``close`` waits for the last one. A write that failed raises
    its error at the next ``write`` or at ``close``: a run never goes on as if a checkpoint existed.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, state: dict[str, Any]) -> None:
        """Start writing ``state`` (a ``snapshot``) once the previous checkpoint is on disk."""
        self.close()
        self._thread = threading.Thread(target=self._save, args=(state,), name="checkpoint", daemon=False)
        self._thread.start()

    def _save(self, state: dict[str, Any]) -> None:
        try:
            save_checkpoint(self.run_dir, state)
        except BaseException as e:  # re-raised in the training thread
            self._error = e

    def close(self) -> None:
        """Wait for the checkpoint being written; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def find_run(root: Path, ref: str) -> Path:
    """The run folder ``ref`` names: a path, or NAME (its newest interrupted run no live process owns)."""
    path = Path(ref)
    if "/" not in ref:
        runs = Workspace(root).models.root / check_name(ref, "model name") / ".runs"
        found = sorted(p for p in runs.glob("*") if (p / CHECKPOINT).is_file()) if runs.is_dir() else []
        if not found:
            raise CnnpipeError(f"no interrupted training run of {ref!r} to resume (no checkpoint under {runs})")
        idle = [p for p in found if abandoned(p)]
        if not idle:
            raise CnnpipeError(f"every run of {ref!r} with a checkpoint is still training in a live process; "
                               "wait for it to end")
        path = idle[-1]
    if not (path / CHECKPOINT).is_file() or not (path / RUN_CONFIG).is_file():
        raise CnnpipeError(f"{path}: not an interrupted training run (needs {CHECKPOINT} and {RUN_CONFIG})")
    return path


@contextmanager
def run_folder(ws: Workspace, name: str, config: TrainConfig, resumed: Path | None) -> Iterator[Path]:
    """The run folder this process owns (``flock``) while it trains: ``resumed``, or a new one under
    ``models/NAME/.runs``. It is removed after the commit, or when the run fails before its first
    checkpoint; no other run's folder is ever touched (others are judged by their lock, not a PID)."""
    if resumed is not None:
        with owned(resumed, "this training run"):
            yield resumed
            shutil.rmtree(resumed, ignore_errors=True)
        return
    runs = ws.models.root / name / ".runs"
    with ExitStack() as stack:
        with ws.models.lock(name):  # sweeping and taking ownership never interleave
            for old in sorted(runs.glob("*")) if runs.is_dir() else []:
                if not (old / CHECKPOINT).exists() and abandoned(old):  # killed before its first epoch
                    shutil.rmtree(old, ignore_errors=True)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            run_dir = runs / f"{stamp}-{secrets.token_hex(4)}"
            try:
                run_dir.mkdir(parents=True)
                stack.enter_context(owned(run_dir, "this training run"))
            except BaseException:  # a full disk (no inode for the folder or its lock): leave no empty folder
                shutil.rmtree(run_dir, ignore_errors=True)
                remove_if_empty(runs)
                raise
        try:
            with writing(runs):
                write_json(run_dir / RUN_CONFIG, asdict(config) | {"name": name})
                yield run_dir
        except BaseException as e:
            if not (run_dir / CHECKPOINT).exists():
                shutil.rmtree(run_dir, ignore_errors=True)
                remove_if_empty(runs)
            elif isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
                raise CnnpipeError(f"cannot write: {e.strerror} ({e.filename}); no version was committed; the last "
                                   f"checkpoint is kept in {run_dir}: free space, then cnnpipe train --resume {name}"
                                   ) from None
            raise
        shutil.rmtree(run_dir, ignore_errors=True)
    remove_if_empty(runs)


def load_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and last checkpoint of an interrupted run (weights only, no code)."""
    try:
        saved = json.loads((run_dir / RUN_CONFIG).read_text())
        config = TrainConfig(**{f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved})
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or hostile checkpoint: refuse it, whatever went wrong
        raise CnnpipeError(f"{run_dir / CHECKPOINT}: cannot resume from it ({type(e).__name__}: {e})") from None
    return config, state


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if nothing is left in it."""
    try:
        folder.rmdir()
    except OSError:
        pass
