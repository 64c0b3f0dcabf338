"""Signed bundles: the OpenSSF ``model-signing`` library in key-pair mode (offline).

The signature, ``bundle.sig`` (a Sigstore bundle holding a DSSE envelope over an in-toto
statement that lists every file's sha256), lives in the bundle beside the files it signs.
It covers every file of the version, ``manifest.json`` included, except itself and the
``verify/`` reports that later runs add; those two exclusions are recorded inside the signed
statement, so they cannot be widened without breaking the signature. Signing never changes
a signed file: the signature is added once, atomically, and a bundle is signed at most once.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError, SignatureError, first_line
from ..store.additions import upload_addition
from ..store.version import ADDED_LATER, SIGNATURE, Version

UNSIGNED = ADDED_LATER  # added after signing: the signature itself and verify's reports
PRIVATE_KEY, PUBLIC_KEY = "cnnpipe-signing.key", "cnnpipe-signing.pub"



@dataclass(frozen=True)
class Trust:
    """How far a bundle from someone else's disk is trusted: ``public_key``, the key its signature
    must verify with; ``require_signature``, refuse to go on without one; ``native``, load native
    code (an AOTInductor package) even without a verified signature."""

    public_key: Path | None = None
    require_signature: bool = False
    native: bool = False

    def admit(self, bundle: Version) -> bool:
        """Verify the signature where a key is given (``SignatureError`` when it fails), before anything
        of the bundle is read; whether the bundle's native code may be loaded."""
        if self.require_signature and self.public_key is None:
            raise CnnpipeError("--require-signature needs --public-key PUB, the key the bundle must be signed with")
        if self.public_key is None:
            return self.native
        check_signature(bundle, self.public_key)
        return True


@dataclass(frozen=True)
class KeyPair:
    """Where ``keygen`` wrote the two halves."""

    private_key: str
    public_key: str


def _require() -> None:
    try:
        import model_signing  # noqa: F401
    except ImportError:
        raise CnnpipeError('signing needs the model-signing package, which is not installed: pip install '
                           '"cnnpipe[signing]" (from a checkout: pip install -e ".[signing]")') from None


def check_key(path: Path, flag: str) -> None:
    """A usage error unless ``path`` is a readable key file and the signing package is installed."""
    _require()
    if not path.is_file():
        raise CnnpipeError(f"{flag} {path}: no such key file (make a pair with cnnpipe keygen)")


def keygen(folder: Path) -> KeyPair:
    """A new ECDSA P-256 key pair in ``folder`` (the private key readable by its owner only); never
    overwrites an existing key."""
    _require()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / PRIVATE_KEY, folder / PUBLIC_KEY
    for path in (private, public):
        if path.exists():
            raise CnnpipeError(f"{path}: already exists; a key is never overwritten (choose another --out)")
    key = ec.generate_private_key(ec.SECP256R1())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(str(private), str(public))


def _hashing(unsigned: tuple[str, ...] = UNSIGNED) -> Any:
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(paths=list(unsigned), ignore_git_paths=False)


def sign_tree(folder: Path, private_key: Path, signature: Path, unsigned: tuple[str, ...]) -> None:
    """Sign every file under ``folder`` but ``unsigned`` (names relative to it) with ``private_key``, into ``signature``."""
    import model_signing

    try:
        config = model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key)
        config.set_hashing_config(_hashing(unsigned)).sign(folder, signature)
    except Exception as e:  # noqa: BLE001 - a key that is not an EC private key, a password-protected one...
        raise CnnpipeError(f"{private_key}: cannot sign with it ({type(e).__name__}: {first_line(e)})") from None


def public_half(private_key: Path) -> bytes:
    """The PEM public key of a private key file (a usage error when it is not one)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    except Exception as e:  # noqa: BLE001 - not PEM, encrypted, another kind of key
        raise CnnpipeError(f"{private_key}: not a usable private key ({type(e).__name__}: {first_line(e)})") from None
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(bundle: Version, private_key: Path) -> Path:
    """Sign every file of ``bundle`` with ``private_key``; writes ``bundle.sig`` into it atomically."""
    check_key(private_key, "--key")
    target = bundle.path / SIGNATURE
    if target.exists():
        raise CnnpipeError(f"{bundle.ref}: is already signed ({target}); a signed bundle is never signed again")
    bundle.rehash()  # sign only what the manifest says was written
    fd, tmp = tempfile.mkstemp(prefix=".sig-", dir=bundle.path.parent)  # outside the version: it never sees it
    os.close(fd)
    try:
        sign_tree(bundle.path, private_key, Path(tmp), UNSIGNED)
        os.chmod(tmp, 0o644)
        os.link(tmp, target)  # fails if a signature appeared meanwhile: never replaced
        try:
            upload_addition(target)
        except BaseException:
            target.unlink()
            raise
    except FileExistsError:
        raise CnnpipeError(f"{bundle.ref}: was signed by another process meanwhile") from None
    finally:
        os.unlink(tmp)
    return target


def check_signature(bundle: Version, public_key: Path) -> None:
    """Raise ``SignatureError`` unless ``bundle.sig`` is a valid signature, by the key whose public
    half is ``public_key``, of exactly the files in the bundle (none changed, added or removed)."""
    check_key(public_key, "--public-key")
    import model_signing

    signature = bundle.path / SIGNATURE
    if not signature.is_file() or signature.is_symlink():
        raise SignatureError(f"{bundle.ref}: is not signed (no {SIGNATURE}); sign it with cnnpipe sign REF --key KEY")
    try:
        config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    except Exception as e:  # noqa: BLE001 - not a PEM public key
        raise CnnpipeError(f"{public_key}: not a usable public key ({type(e).__name__}: {first_line(e)})") from None
    try:
        config.verify(bundle.path, signature)
    except Exception as e:  # noqa: BLE001 - a bad signature, another key, a changed or extra file: all fail closed
        raise SignatureError(f"{bundle.ref}: the signature does not verify with {public_key.name} "
                             f"({_why(e)})") from None


def _why(e: Exception) -> str:
    """model-signing's reason in a few words: which files changed, appeared or went missing."""
    text = str(e)
    changed = re.findall(r"Hash mismatch for \\*'([^'\\]+)", text)  # quotes may come escaped (a list's repr)
    parts = [f"changed since signing: {', '.join(changed)}"] if changed else []
    parts += [f"{m.group(1).lower()}: {m.group(2)}"
              for m in re.finditer(r"(Extra files found|Missing files) in model '[^']*': ([^\"\]]+)", text)]
    return "; ".join(parts) or f"{type(e).__name__}: {first_line(e)}"
