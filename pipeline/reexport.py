"""Verify's re-export: the fp32 ONNX file and the pt2 program made again from the weights it rebuilt.

Answers on test images cannot see a subgraph that fires only on a trigger pattern, nor a
changed attribute whose effect no test image shows. Exports are byte-reproducible (same
versions of torch and the exporters), so verify writes both files again and compares them
with the shipped ones: equal bytes pass; otherwise the difference is described canonically
(ONNX: operators, topology, attributes, initializers bit for bit, metadata; pt2: the archive's
members) and the format fails.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from .formats import FORMATS, ExportContext

COMPARED = ("onnx", "pt2")  # the files re-exported; the others are derived from them, or hold native code


def compare_reexports(ctx: ExportContext, shipped: dict[str, Path]) -> dict[str, list[str]]:
    """For each format of ``COMPARED`` in ``shipped`` (format → file), how the shipped file differs
    from a fresh export from ``ctx`` (an empty list: byte-identical)."""
    found: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="cnnpipe-reexport-") as tmp:
        for fmt in (f for f in COMPARED if f in shipped):
            fresh = Path(tmp) / FORMATS[fmt].file
            FORMATS[fmt].save(ctx, fresh)
            if fresh.read_bytes() == shipped[fmt].read_bytes():
                found[fmt] = []
            else:
                found[fmt] = (_onnx_difference if fmt == "onnx" else _archive_difference)(shipped[fmt], fresh) or [
                    "the bytes differ, though no node, initializer, attribute or metadata does"]
    return found


def _attributes(node: Any) -> dict[str, bytes]:
    return {a.name: a.SerializeToString(deterministic=True) for a in node.attribute}


def _onnx_difference(shipped: Path, fresh: Path) -> list[str]:
    """The canonical differences of two ONNX files, first ones first (at most five)."""
    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(shipped), load_external_data=False), onnx.load(str(fresh), load_external_data=False)
    found = []
    ops_a, ops_b = Counter(n.op_type for n in a.graph.node), Counter(n.op_type for n in b.graph.node)
    extra, missing = ops_a - ops_b, ops_b - ops_a
    if extra or missing:
        found.append(f"{sum(extra.values())} node(s) more ({', '.join(sorted(extra)) or 'none'}) and "
                     f"{sum(missing.values())} fewer ({', '.join(sorted(missing)) or 'none'}) than a re-export")
    else:
        for i, (x, y) in enumerate(zip(a.graph.node, b.graph.node)):
            if (x.op_type, list(x.input), list(x.output)) != (y.op_type, list(y.input), list(y.output)):
                found.append(f"node {i} ({x.op_type} {x.name!r}) is wired differently")
                break
            changed = sorted(k for k in _attributes(x).keys() | _attributes(y).keys()
                             if _attributes(x).get(k) != _attributes(y).get(k))
            if changed:
                found.append(f"node {x.name!r} ({x.op_type}): attribute {', '.join(changed)} differs")
                break
    inits_a = {t.name: t for t in a.graph.initializer}
    inits_b = {t.name: t for t in b.graph.initializer}
    if inits_a.keys() != inits_b.keys():
        found.append(f"initializers differ: {', '.join(sorted(inits_a.keys() ^ inits_b.keys())[:5])}")
    for name in sorted(inits_a.keys() & inits_b.keys()):
        x, y = numpy_helper.to_array(inits_a[name]), numpy_helper.to_array(inits_b[name])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            found.append(f"initializer {name!r} differs from the weights")
            break
    meta_a = {p.key: p.value for p in a.metadata_props}
    meta_b = {p.key: p.value for p in b.metadata_props}
    changed_meta = sorted(k for k in meta_a.keys() | meta_b.keys() if meta_a.get(k) != meta_b.get(k))
    if changed_meta:
        found.append(f"metadata differs: {', '.join(changed_meta)}")
    if [(o.domain, o.version) for o in a.opset_import] != [(o.domain, o.version) for o in b.opset_import]:
        found.append("opset imports differ")
    if [i.SerializeToString() for i in (*a.graph.input, *a.graph.output)] != \
            [i.SerializeToString() for i in (*b.graph.input, *b.graph.output)]:
        found.append("graph inputs or outputs differ")
    return found[:5]


def _archive_difference(shipped: Path, fresh: Path) -> list[str]:
    """Which members of two zip archives (a pt2 program) differ, by name, size and CRC; nothing is
    decompressed or loaded (the verdict is already the bytes' inequality; this only describes it)."""
    try:
        with zipfile.ZipFile(shipped) as a, zipfile.ZipFile(fresh) as b:
            members_a = {i.filename: (i.file_size, i.CRC) for i in a.infolist()}
            members_b = {i.filename: (i.file_size, i.CRC) for i in b.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return [f"not a readable archive ({type(e).__name__})"]
    found = []
    if members_a.keys() != members_b.keys():
        found.append(f"members differ: {', '.join(sorted(members_a.keys() ^ members_b.keys())[:5])}")
    changed = sorted(k for k in members_a.keys() & members_b.keys() if members_a[k] != members_b[k])
    if changed:
        found.append(f"{len(changed)} member(s) differ: {', '.join(changed[:5])}")
    return found
