"""Sign an export bundle (``cnnpipe sign REF --key KEY``): adds ``bundle.sig``, changes no file.

A bundle in a store may have been changed by anyone who can write it, so ``sign`` first runs
verify (integrity, records, re-derivation, every format's answers) and refuses a bundle that
fails: a signature would otherwise vouch for a tampered file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import NotVerified
from ..store.workspace import Workspace
from ..verification.signing import check_key
from ..verification.signing import sign as sign_version
from .verify import verify


@dataclass
class SignResult:
    """The bundle signed, its signature file, and the verify report that cleared it."""

    bundle: str
    signature: str
    report: str


def sign(bundle_ref: str, key: Path, root: Path = Path(".")) -> SignResult:
    """Verify ``bundle_ref``, then sign every file of it with the private key ``key`` (model-signing, key-pair mode)."""
    check_key(key, "--key")
    bundle = Workspace(root).exports.resolve(bundle_ref)
    result = verify(bundle.ref, root=root)
    if not result.passed:
        failed = [f"{r.format}: {r.reasons[0]}" for r in result.formats if not r.passed and r.reasons]
        why = "; ".join([result.integrity] if result.integrity != "ok" else failed[:3]) or "no format passed"
        raise NotVerified(f"{bundle.ref}: refusing to sign a bundle that fails verify ({why}; report: {result.report_path})")
    return SignResult(bundle=bundle.ref, signature=str(sign_version(bundle, key)), report=result.report_path)
