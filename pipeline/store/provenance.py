"""Where an artifact came from: software versions, device, git state, command line."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, Any]:
    return {
        "cnnpipe": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "onnx": _version("onnx"),
        "onnxscript": _version("onnxscript"),
        "onnxruntime": _version(*DISTRIBUTIONS["onnxruntime"]),
        "safetensors": _version("safetensors"),
    }


DISTRIBUTIONS = {"onnxruntime": ("onnxruntime-gpu", "onnxruntime")}  # a package by the names it is installed under


def environment(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Versions of Python and the libraries that shape a result (and of ``packages``, those of the
    formats an export wrote), and the device. A stage that did not import torch (download) used
    no device; torch is not imported just to say so."""
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_available()
    extra = {name: _version(*DISTRIBUTIONS.get(name, (name,))) for name in packages}
    return _versions() | extra | {
        "torch": torch.__version__ if torch is not None else _version("torch"),
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
    }


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any] | None:
    """Commit and dirty flag of the git checkout cnnpipe runs from, if any."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def lineage(parents: list[Any], config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The lineage block of a manifest: parent versions, resolved config, code and argv."""
    return {
        "parents": [{"ref": p.ref, "manifest_sha256": p.manifest_sha256} for p in parents],
        "config": config,
        **extra,
        "git": git_state(),
        "argv": sys.argv,
    }
