"""onnxruntime sessions on exactly the provider asked for (importing this does not import torch)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# onnxruntime's CUDA provider runs float32 convolutions and matrix products in TF32 by default
# (logits off by ~1e-2 on an H100); cnnpipe's sessions keep float32 so that what verify proved is what runs.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"cpu": {}, "cuda": {"use_tf32": "0"}}


def onnx_session(path: Path, provider: str, threads: int = 0) -> Any:
    """A session on ``provider`` only; callers compare ``get_providers()`` to refuse a silent fallback.

    ``threads`` sets intra-op threads (0: onnxruntime's default).
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # a provider that cannot start is reported by the caller, not logged
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures reach the caller as exceptions (a run stopped by --timeout too)
    options.intra_op_num_threads = threads
    if provider == "cuda":
        _preload_cuda_libraries(ort)
    return ort.InferenceSession(str(path), options, providers=[(PROVIDERS[provider], PROVIDER_OPTIONS[provider])])


def stoppable_runs() -> tuple[Any, Callable[[], None]]:
    """``RunOptions`` to pass to ``session.run``, and a function another thread calls to stop a run
    that uses them (it and every later run stop at the next node, inside a ``Loop`` too)."""
    import onnxruntime as ort

    options = ort.RunOptions()

    def stop() -> None:
        options.terminate = True

    return options, stop


def _preload_cuda_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries of pip's nvidia-* packages, so CUDA works without torch imported."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu 1.21 and later
    if preload is not None:
        try:  # it prints what it could not find; stdout may be carrying --json
            with contextlib.redirect_stdout(io.StringIO()):
                preload(cuda=True, cudnn=True, msvc=False)
        except Exception:  # noqa: BLE001 - libraries found another way still work; a missing one is reported by the caller
            pass
