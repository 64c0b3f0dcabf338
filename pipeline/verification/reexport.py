"""Verify's re-export: the files of a bundle made again from the weights verify rebuilt, compared.

Answers on test images cannot see a subgraph that fires only on a trigger pattern, nor a
changed attribute whose effect no test image shows. Exports are byte-reproducible (same
versions of torch and the exporters), so verify writes the files again and compares them
with the shipped ones: equal bytes pass; otherwise the difference is described canonically
(ONNX: operators, topology, attributes, initializers bit for bit, metadata; pt2: the
archive's members) and the format fails. Verify re-exports before it loads any shipped file,
in the state an export process is in.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError
from ..formats import FORMATS, REEXPORTED
from ..formats.base import ExportContext

# Made again and compared: the formats whose record says ``reexported``, parents before the variants
# derived from them; those marked ``fresh`` (TorchScript: its mangled names count what the process
# traced before; ExecuTorch: its lowering takes seconds, so it runs alongside) are written by export,
# and made again by verify, each in a fresh worker. A format whose writer's bytes vary from run to
# run (the ORT converter's layout; TorchScript's debug members) is compared by its record's ``same``.
# Not among them: pt2-aoti (native code, compiled by the C++ compiler): answers and a signature only.


def unauthenticated(spec: Any) -> str:
    """Why a format (``formats.base.Format``) that can run code when loaded was not loaded."""
    return (f"unauthenticated: {spec.file} can run code when it is loaded, and it is neither covered by a signature "
            "verified with --public-key nor byte-identical to cnnpipe's re-export of the weights; it was not loaded")


def not_exported(e: Exception) -> list[str]:
    """The differences of a format whose re-export failed: that failure."""
    return [f"it could not be exported again here ({e})"]


def compare_reexports(ctx: ExportContext, bundle: Path, formats: list[str]) -> dict[str, list[str]]:
    """For each format of ``REEXPORTED`` among ``formats`` (but those re-exported in a fresh worker),
    how its files in ``bundle`` differ from an export from ``ctx`` (an empty list: every file byte-identical)."""
    found: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="cnnpipe-reexport-") as tmp:
        for fmt in (f for f in REEXPORTED if f in formats and not FORMATS[f].fresh):
            try:
                FORMATS[fmt].save(ctx, Path(tmp) / FORMATS[fmt].file)
            except (CnnpipeError, OSError) as e:  # its exporter is missing here, or refuses: this format only
                found[fmt] = not_exported(e)
                continue
            found[fmt] = compare_files(fmt, bundle, Path(tmp))
    return found


def compare_files(fmt: str, bundle: Path, made: Path) -> list[str]:
    """How the files of format ``fmt`` in ``bundle`` differ from those made again in folder ``made``."""
    spec, found = FORMATS[fmt], []
    for rel in spec.files:
        shipped, fresh = bundle / rel, made / rel
        if spec.same is not None and shipped.is_file() and fresh.is_file() and _same(spec.same, shipped, fresh):
            continue
        if not shipped.is_file() or shipped.read_bytes() != fresh.read_bytes():
            try:
                found += [f"{rel}: {why}" for why in _difference(shipped, fresh, spec.onnx_graph)]
            except Exception as e:  # noqa: BLE001 - a hostile file: the verdict stands, its description fails
                found.append(f"{rel}: the bytes differ, and it cannot be read to say how ({type(e).__name__})")
    return found


def _difference(shipped: Path, fresh: Path, onnx_graph: bool) -> list[str]:
    if not shipped.is_file():
        return ["missing"]
    if onnx_graph:
        found = _onnx_difference(shipped, fresh)
    elif zipfile.is_zipfile(fresh):
        found = _archive_difference(shipped, fresh)
    else:
        found = []
    return found or ["the bytes differ" + (", though no node, initializer, attribute or metadata does" if onnx_graph else "")]


def _same(same: Any, shipped: Path, fresh: Path) -> bool:
    try:
        return bool(same(shipped, fresh))
    except Exception:  # noqa: BLE001 - a hostile file the comparison cannot read is not the same
        return False


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
