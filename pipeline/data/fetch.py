"""Checked downloads from official URLs or a mirror (``http(s)://``, ``file://`` or a folder)."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import ChecksumError, CnnpipeError

MIRROR_ENV = "CNNPIPE_MIRROR"
TIMEOUT_S = 30.0
OnBytes = Callable[[str, int, int | None], None]  # (file name, bytes so far, total or None)
# The published size of each published file, by its md5: a download is cut off past it, so a
# mirror that sends an endless body cannot fill the disk. A file not listed here may take MAX_BYTES.
PUBLISHED_BYTES = {
    "f68b3c2dcbeaaa9fbdd348bbdeb94873": 9_912_422,  # MNIST train-images-idx3-ubyte.gz
    "d53e105ee54ea40749a09fcbcd1e9432": 28_881,  # MNIST train-labels-idx1-ubyte.gz
    "9fb629c4189551a2d022fa330f9573f3": 1_648_877,  # MNIST t10k-images-idx3-ubyte.gz
    "ec29112dd5afa0611ce80d1b7f02629c": 4_542,  # MNIST t10k-labels-idx1-ubyte.gz
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d": 26_421_880,  # Fashion-MNIST train-images-idx3-ubyte.gz
    "25c81989df183df01b3e8a0aad5dffbe": 29_515,  # Fashion-MNIST train-labels-idx1-ubyte.gz
    "bef4ecab320f06d8554ea6380940ec79": 4_422_102,  # Fashion-MNIST t10k-images-idx3-ubyte.gz
    "bb300cfdad3c16e7a12a480ee83cd310": 5_148,  # Fashion-MNIST t10k-labels-idx1-ubyte.gz
    "c58f30108f718f92721af3b95e74349a": 170_498_071,  # CIFAR-10 cifar-10-python.tar.gz
}
MAX_BYTES = 1 << 30



def sources(official: list[str], mirror: str | None) -> list[str]:
    """Base locations to try in order: the mirror alone when one is set, else the official ones."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    return [mirror] if mirror else official


def _location(base: str, fname: str) -> str:
    scheme = urllib.parse.urlparse(base).scheme
    if scheme in ("http", "https", "file"):
        return base.rstrip("/") + "/" + urllib.parse.quote(fname)
    if scheme and len(scheme) > 1:
        raise CnnpipeError(f"mirror {base!r}: unsupported scheme {scheme!r}; use http(s)://, file:// or a folder")
    return str(Path(base) / fname)


def _copy(location: str, target: Path, fname: str, limit: int, on_bytes: OnBytes | None) -> None:
    """Copy ``location`` to ``target`` in blocks; a short body, or one longer than ``limit``
    (announced or sent), is an error, never a file."""
    if "://" in location:
        request = urllib.request.Request(location, headers={"User-Agent": "cnnpipe"})
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    else:
        response = open(location, "rb")
        total = os.fstat(response.fileno()).st_size
    if total is not None and total > limit:
        response.close()
        raise ChecksumError(f"{fname} from {location}: {total:,} bytes announced, over the published {limit:,}; "
                            "nothing was kept")
    done = 0
    with response, open(target, "wb") as out:
        while block := response.read(min(1 << 20, limit + 1 - done)):
            out.write(block)
            done += len(block)
            if done > limit:
                raise ChecksumError(f"{fname} from {location}: cut off past the published {limit:,} bytes; "
                                    "nothing was kept")
            if on_bytes is not None:
                on_bytes(fname, done, total)
        out.flush()
        os.fsync(out.fileno())
    if total is not None and done != total:
        raise ChecksumError(f"{fname} from {location}: truncated, got {done:,} of {total:,} bytes; try again")


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(fname: str, md5: str, bases: list[str], dest: Path, on_bytes: OnBytes | None = None) -> Path:
    """Fetch ``fname`` into ``dest`` from the first base that serves it with the published md5.

    Unreachable sources are tried in turn; a wrong checksum, a short body or one past the
    published size removes the partial file. When no source gave the right bytes, the error names the file, every
    location tried and what to do.
    """
    target = dest / fname
    partial = dest / f".{fname}.part"
    failures: list[str] = []
    bad_content = False
    for base in bases:
        location = _location(base, fname)
        try:
            _copy(location, partial, fname, PUBLISHED_BYTES.get(md5, MAX_BYTES), on_bytes)
            actual = md5_file(partial)
            if actual != md5:
                raise ChecksumError(f"{fname} from {location}: md5 {actual}, expected {md5}")
            os.replace(partial, target)
            return target
        except ChecksumError as e:
            bad_content = True
            failures.append(str(e).removeprefix(f"{fname} from "))
        except urllib.error.HTTPError as e:
            failures.append(f"{location}: HTTP {e.code} {e.reason}")
        except urllib.error.URLError as e:
            failures.append(f"{location}: {e.reason}")
        except (OSError, ValueError, http.client.HTTPException) as e:
            failures.append(f"{location}: {type(e).__name__}: {e}")
        finally:
            partial.unlink(missing_ok=True)
    tried = "; ".join(failures)
    if bad_content:
        raise ChecksumError(
            f"{fname}: no source gave the published file ({tried}); the download is corrupt or "
            f"truncated: try again, or point --mirror / {MIRROR_ENV} at a good copy"
        )
    raise CnnpipeError(
        f"{fname}: could not be fetched ({tried}); check the network or point --mirror / "
        f"{MIRROR_ENV} at a copy (http(s)://, file:// or a folder)"
    )

