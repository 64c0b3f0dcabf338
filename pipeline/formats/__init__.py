"""Every export format in one table: how it is written, loaded, judged, timed and described.

Each runtime has its module here (``onnx``, ``pytorch``, ``openvino``, ``executorch``, ``ort``,
``aoti``), which registers one ``Format`` record (``base``) per format or variant. ``export``,
``verify``, ``bench``, ``predict``, the model card, ``model.json`` and the CLI's choices and
variant flags all read ``FORMATS``: adding a format is one module plus its place in ``RUNTIMES``.

The table's order is the export order: base formats by runtime (legacy ones last), then the
variants derived from them. Importing this package imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from ..description import ModelDescription
from . import aoti, executorch, onnx, openvino, ort, pytorch
from .base import REGISTRY, Format

# The runtimes in export order: ONNX first (its opset goes into every later format's metadata).
RUNTIMES = (onnx, pytorch, openvino, executorch, ort, aoti)
_RANK = {module.__name__: i for i, module in enumerate(RUNTIMES)}

FORMATS: dict[str, Format] = {f.name: f for f in sorted(
    REGISTRY.values(), key=lambda f: (f.parent is not None, f.legacy, _RANK[f.write.__module__]))}
BASE_FORMATS = tuple(name for name, f in FORMATS.items() if f.parent is None)
VARIANT_FLAGS = tuple(dict.fromkeys(f.flag for f in FORMATS.values() if f.flag))
REEXPORTED = tuple(name for name, f in FORMATS.items() if f.reexported)  # parents before their variants


def load_snippets(desc: ModelDescription) -> str:
    """The model card's "how to load" section for every base format."""
    fields = {"arch": desc.arch, "channels": desc.input.channels, "height": desc.input.height,
              "classes": len(desc.classes)}
    return "\n\n".join(f.snippet.format(**fields) for f in FORMATS.values() if f.snippet)


def flag_help(flag: str) -> str:
    """The export command's help for a variant flag: every file it adds."""
    return "Also write " + "; and ".join(f.flag_help for f in FORMATS.values() if f.flag == flag) + "."
