"""A bundle's own records agree: which formats it holds, and that every file is explained.

Whoever can write a bundle can re-hash its manifest, so the sha256 check alone cannot see a
format dropped from one list while its file stays (and is swapped), or a file slipped in
beside the others. Verify therefore checks the union of what the manifest, ``model.json``
and the files present say, and fails on any disagreement or unexplained file, naming it.
"""

from __future__ import annotations

import re
from typing import Any

from ..description import MODEL_JSON
from ..evaluation.card import CARD_FILES
from ..formats import FORMATS
from ..store.version import MANIFEST, REPORTS, SIGNATURE, Version

_REPORT = re.compile(rf"^{REPORTS}/[0-9TZ]+-[A-Za-z0-9_-]*-[0-9]+(\.intoto)?\.json$")  # reports and signed statements


def formats_to_check(bundle: Version, bundle_json: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Every format any record names or any file shows, in the table's order, and each disagreement."""
    claims = {
        "the manifest": bundle.results.get("formats", []),
        "model.json": bundle_json.get("formats", []),
        "the files present": [f for f, spec in FORMATS.items() if (bundle.path / spec.file).exists()],
    }
    problems = [f"{where} names an unknown format {name!r}"
                for where, names in claims.items() for name in names if name not in FORMATS]
    union = [f for f in FORMATS if any(f in names for names in claims.values())]
    for fmt in union:
        missing = [where for where, names in claims.items() if fmt not in names]
        if missing:
            holders = [where for where in claims if where not in missing]
            problems.append(f"format {fmt!r} is in {' and '.join(holders)} but not in {' or '.join(missing)}")
    return union, problems


def unexplained_files(bundle: Version, bundle_json: dict[str, Any], formats: list[str]) -> list[str]:
    """Files and links in the bundle that no record explains. What an export writes is known: the
    files of its formats, ``model.json``, the model card and what it shows, the user's code file
    and the Triton copy that ``model.json`` names; besides them a bundle holds only its manifest,
    its signature and verify's reports. A file the manifest lists is not explained by that alone,
    since whoever can write the bundle can re-hash the manifest."""
    expected = {rel for fmt in formats for rel in FORMATS[fmt].files} | {MODEL_JSON, MANIFEST, SIGNATURE, *CARD_FILES}
    expected |= {rel for rel in [(bundle_json.get("source") or {}).get("file"), *bundle_json.get("triton", [])]
                 if isinstance(rel, str)}
    found = []
    for path in sorted(bundle.path.rglob("*")):
        rel = path.relative_to(bundle.path).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if rel not in expected and not (_REPORT.match(rel) and path.is_file() and not path.is_symlink()):
            found.append(rel)
    return found


def check_bundle_records(bundle: Version, bundle_json: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The formats verify checks, and every way the bundle's records disagree (empty when they agree)."""
    formats, problems = formats_to_check(bundle, bundle_json)
    extra = unexplained_files(bundle, bundle_json, formats)
    if extra:
        problems.append(f"files no record explains: {', '.join(extra[:10])}"
                        + (f" (and {len(extra) - 10} more)" if len(extra) > 10 else ""))
    return formats, problems

