"""Every export format in one table: how it is written, loaded, judged, timed and described.

Each runtime has its module here (``onnx``, ``pytorch``, ``openvino``, ``executorch``, ``ort``,
``litert``, ``ncnn``, ``mnn``, ``aoti``), which registers one ``Format`` record (``base``) per format or variant. ``export``,
``verify``, ``bench``, ``predict``, the model card, ``model.json`` and the CLI's choices and
variant flags all read ``FORMATS``: adding a format is one module plus its place in ``RUNTIMES``.

The table's order is the export order: base formats by runtime (legacy ones last), then the
variants derived from them. Importing this package imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..description import ModelDescription
from . import aoti, executorch, litert, mnn, ncnn, onnx, openvino, ort, pytorch
from .base import REGISTRY, Format

# The runtimes in export order: ONNX first (its opset goes into every later format's metadata).
RUNTIMES = (onnx, pytorch, openvino, executorch, ort, litert, ncnn, mnn, aoti)
_RANK = {module.__name__: i for i, module in enumerate(RUNTIMES)}

FORMATS: dict[str, Format] = {f.name: f for f in sorted(
    REGISTRY.values(), key=lambda f: (f.parent is not None, f.legacy, _RANK[f.write.__module__]))}
BASE_FORMATS = tuple(name for name, f in FORMATS.items() if f.parent is None)
VARIANT_FLAGS = tuple(dict.fromkeys(f.flag for f in FORMATS.values() if f.flag))
REEXPORTED = tuple(name for name, f in FORMATS.items() if f.reexported)  # parents before their variants


def load_snippets(desc: ModelDescription, formats: Iterable[str] | None = None) -> list[str]:
    """Each base format's (of ``formats``: those of a bundle) "how to load" text for the model card: its code
    takes the float32 batch ``x`` and ends with ``logits`` (the card puts the image's decoding before it and a
    print after)."""
    from ..nets.sources import ArchSource, build_code  # imports torch: cards are made in workers, not in verify

    inp = desc.input
    source = ArchSource.from_json(desc.source) if desc.source else ArchSource("registry", desc.arch)
    fields = {"arch": desc.arch, "channels": inp.channels, "height": inp.height, "classes": len(desc.classes),
              "build": build_code(source, desc.arch, inp.channels, inp.height, len(desc.classes))}
    shown = FORMATS if formats is None else set(formats)
    return [f.snippet.format(**fields) for name, f in FORMATS.items() if f.snippet and name in shown]


def flag_help(flag: str) -> str:
    """The export command's help for a variant flag: every file it adds."""
    return "Also write " + "; and ".join(f.flag_help for f in FORMATS.values() if f.flag == flag) + "."
