"""Sign an export bundle (``cnnpipe sign REF --key KEY``): adds ``bundle.sig``, changes no file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..store.workspace import Workspace
from ..verification.signing import sign as sign_version


@dataclass
class SignResult:
    """The bundle signed and its signature file."""

    bundle: str
    signature: str


def sign(bundle_ref: str, key: Path, root: Path = Path(".")) -> SignResult:
    """Sign every file of ``bundle_ref`` with the private key ``key`` (model-signing, key-pair mode)."""
    return SignResult(bundle=bundle_ref, signature=str(sign_version(Workspace(root).exports.resolve(bundle_ref), key)))
