"""onnxruntime sessions on exactly the provider asked for (importing this does not import torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def onnx_session(path: Path, provider: str, threads: int = 0) -> Any:
    """A session on ``provider`` only; callers compare ``get_providers()`` to refuse a silent fallback.

    ``threads`` sets intra-op threads (0: onnxruntime's default).
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # a provider that cannot start is reported by the caller, not logged
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=[PROVIDERS[provider]])
