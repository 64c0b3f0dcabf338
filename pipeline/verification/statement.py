"""Signed verification statements: verify's verdict as an in-toto Statement in a DSSE envelope.

``verify --sign-key KEY`` writes ``verify/<time>-<host>-<pid>.intoto.json``: a DSSE envelope
(securesystemslib) whose payload is an in-toto v1 Statement (in-toto-attestation) naming
every file of the bundle by sha256 (``manifest.json`` included) as its subject, with the
verdict as predicate: each format's figures and tolerances, the runtimes and their versions,
the CPU's instruction sets, the dataset hash, the images and batch sizes used, the version
number. A report beside it is only a convenience: ``publish`` and ``sign`` trust a statement
that verifies with the user's public key and names this bundle's current digests, never an
unsigned report.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError, NotVerified, first_line
from ..fs import dumps, read_small, sha256_file
from ..store.additions import STATEMENT_SUFFIX, add_report, report_path
from ..store.remote import MAX_ADDITION
from ..store.version import MANIFEST, REPORTS, Version

PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "urn:cnnpipe:verification:v1"


def _require() -> None:
    try:
        import in_toto_attestation  # noqa: F401
        import securesystemslib  # noqa: F401
    except ImportError:
        raise CnnpipeError('signed verdicts need in-toto-attestation and securesystemslib: pip install '
                           '"cnnpipe[signing]" (from a checkout: pip install -e ".[signing]")') from None


def subjects(bundle: Version) -> dict[str, str]:
    """Every file of the bundle (as its manifest lists them) and the manifest itself, by sha256."""
    files = {f["path"]: f["sha256"] for f in bundle.manifest["files"]}
    return files | {MANIFEST: sha256_file(bundle.path / MANIFEST)}


def cpu_flags() -> list[str]:
    """The vector instruction sets this CPU reports (what a runtime's kernels may have used)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return [platform.machine()]
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith(("flags", "Features"))), [])
    return sorted(f for f in flags if f.startswith(("avx", "sse", "fma", "amx", "neon", "asimd", "sve", "f16c")))


def _statement(bundle: Version, predicate: dict[str, Any]) -> bytes:
    from google.protobuf.json_format import MessageToJson
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    described = [ResourceDescriptor(name=rel, digest={"sha256": sha}).pb for rel, sha in sorted(subjects(bundle).items())]
    statement = Statement(described, PREDICATE_TYPE, json.loads(dumps(predicate)))
    statement.validate()
    return MessageToJson(statement.pb, sort_keys=True).encode()


def _signer(private_key: Path) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    try:
        return CryptoSigner(load_pem_private_key(read_small(private_key, 1 << 16), password=None))
    except (ValueError, TypeError) as e:
        raise CnnpipeError(f"{private_key}: cannot sign with it ({type(e).__name__}: {first_line(e)})") from None


def _public(public_key: Path) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    try:
        return SSlibKey.from_crypto(load_pem_public_key(read_small(public_key, 1 << 16)))
    except (ValueError, TypeError) as e:
        raise CnnpipeError(f"{public_key}: not a usable public key ({type(e).__name__}: {first_line(e)})") from None


def write_statement(bundle: Version, predicate: dict[str, Any], private_key: Path) -> Path:
    """Sign ``predicate`` (verify's verdict) about ``bundle``'s files; the envelope goes under ``verify/``."""
    _require()
    from securesystemslib.dsse import Envelope

    envelope = Envelope(_statement(bundle, predicate), PAYLOAD_TYPE, {})
    envelope.sign(_signer(private_key))
    path = report_path(bundle, STATEMENT_SUFFIX)
    add_report(path, json.dumps(envelope.to_dict(), indent=2) + "\n")
    return path


def check_statements(bundle: Version, public_key: Path) -> list[dict[str, Any]]:
    """Each statement under ``verify/``, newest first: whether it verifies with ``public_key`` and
    names exactly this bundle's files, and its verdict; never raises for a bad statement."""
    _require()
    key = _public(public_key)
    folder = bundle.path / REPORTS
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [_check(path, bundle, key) for path in sorted(folder.glob(f"*{STATEMENT_SUFFIX}"), reverse=True)]


def _check(path: Path, bundle: Version, key: Any) -> dict[str, Any]:
    from securesystemslib.dsse import Envelope

    row: dict[str, Any] = {"file": path.name, "valid": False, "passed": False}
    try:
        envelope = Envelope.from_dict(json.loads(read_small(path, MAX_ADDITION)))
        if envelope.payload_type != PAYLOAD_TYPE:
            raise ValueError(f"payload type {envelope.payload_type!r}")
        envelope.verify([key], 1)
    except Exception as e:  # noqa: BLE001 - unreadable, another key, a changed byte: not valid
        return row | {"reason": f"does not verify with {key.keyid[:12]}… ({type(e).__name__}: {first_line(e)})"}
    statement = json.loads(envelope.payload)
    named = {s.get("name"): s.get("digest", {}).get("sha256") for s in statement.get("subject", [])}
    predicate = statement.get("predicate", {})
    if statement.get("predicateType") != PREDICATE_TYPE:
        return row | {"reason": f"not a verification statement ({statement.get('predicateType')!r})"}
    if predicate.get("bundle") != bundle.ref or named != subjects(bundle):
        changed = sorted(k for k in named.keys() | subjects(bundle).keys() if named.get(k) != subjects(bundle).get(k))
        return row | {"reason": f"signed for other files ({', '.join(changed[:5]) or predicate.get('bundle')})"}
    return row | {"valid": True, "passed": predicate.get("passed") is True, "reason": ""}


def proven(bundle: Version, public_key: Path) -> dict[str, Any]:
    """The newest statement that verifies with ``public_key``, names this bundle's files and passed;
    ``NotVerified`` naming why not."""
    rows = check_statements(bundle, public_key)
    good = [r for r in rows if r["valid"] and r["passed"]]
    if good:
        return good[0]
    why = "; ".join(f"{r['file']}: {r['reason'] or 'its verdict is failed'}" for r in rows[:3]) or "there is none"
    raise NotVerified(f"{bundle.ref}: no passed verification statement verifies with {public_key.name} ({why}); "
                      f"run cnnpipe verify {bundle.ref} --sign-key KEY")
