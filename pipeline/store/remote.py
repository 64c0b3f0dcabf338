"""Stores on object storage: ``--root s3://bucket/prefix`` (fsspec; S3 through s3fs).

A remote root is mirrored by a local cache folder, and the stages work on that folder as on any
root. ``store`` asks the ``Mirror`` of a path to fetch what it reads and publish what it commits,
keeping the artifact protocol where there is no rename and no ``flock``:

- a version number is claimed with a conditional write (``If-None-Match: *``) of a marker
  ``NAME/.claims/vN``; a writer that loses the race takes the next number;
- the version's files are uploaded (large ones in multipart parts), ``manifest.json`` last: a
  version is visible only once its manifest exists;
- nothing is overwritten (every upload of a version file is a create), and ``latest`` moves only
  forward (compare-and-swap on its ETag);
- what is read is downloaded once into the cache and checked against the manifest's sha256.

AWS settings are the standard ones (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_REGION``…), so MinIO, Ceph and AWS itself all work.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError, first_line

CACHE_ENV = "CNNPIPE_CACHE"
CLAIMS = ".claims"
SCHEMES = {"s3": "s3fs"}  # URL scheme -> the package that serves it (the `s3` extra)
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}
PART_BYTES = 16 * 2**20  # a file over this is uploaded in multipart parts of this size (S3's minimum: 5 MiB)
PARTS_IN_FLIGHT = 4  # parts uploaded at once: memory stays near PART_BYTES * PARTS_IN_FLIGHT, whatever the file
MAX_ADDITION = 16 * 2**20  # bytes of a signature or a verify report fetched from the store
CAS_TRIES = 50  # compare-and-swap attempts on ``latest`` before giving up
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://(.+)$")
_mirrors: dict[Path, Mirror] = {}


def is_url(root: str | Path) -> bool:
    """Whether ``root`` names object storage (``scheme://…``) rather than a folder."""
    return isinstance(root, str) and bool(_URL.match(root))


def cache_home() -> Path:
    """Where remote roots are mirrored: ``CNNPIPE_CACHE``, else ``~/.cache/cnnpipe``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cnnpipe")


@dataclass(frozen=True)
class Mirror:
    """A remote root and the local folder that mirrors it."""

    url: str
    fs: Any  # an fsspec filesystem
    base: str  # the root's path on that filesystem (bucket/prefix)
    cache: Path

    def key(self, local: Path) -> str:
        """The remote path of a local path under the cache."""
        rel = Path(local).relative_to(self.cache).as_posix()
        return self.base if rel == "." else f"{self.base}/{rel}"

    @contextmanager
    def calling(self, what: str, local: Path) -> Iterator[None]:
        """Any failure of the object store becomes one line naming the root, the object and the cause."""
        try:
            yield
        except CnnpipeError:
            raise
        except FileExistsError:
            raise
        except Exception as e:
            raise CnnpipeError(f"--root {self.url}: cannot {what} {self.key(local)}: {_cause(e)}") from None

    def listdir(self, local_dir: Path) -> list[str]:
        """Names directly under ``local_dir``'s remote counterpart ([] when there is none)."""
        with self.calling("list", local_dir):
            try:
                entries = self.fs.ls(self.key(local_dir), detail=False, refresh=True)
            except FileNotFoundError:
                return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def find(self, local_dir: Path) -> dict[str, dict[str, Any]]:
        """Every object under ``local_dir``'s counterpart, by path relative to it, with its details."""
        prefix = self.key(local_dir) + "/"
        with self.calling("list", local_dir):
            try:
                found = self.fs.find(prefix, detail=True, withdirs=False)
            except FileNotFoundError:
                return {}
        self.fs.invalidate_cache()
        return {k[len(prefix):]: v for k, v in found.items() if k.startswith(prefix)}

    def read(self, local: Path, limit: int) -> bytes | None:
        """The bytes of a small object (None if absent); an object over ``limit`` bytes is refused."""
        with self.calling("read", local):
            try:
                size = self.fs.info(self.key(local), refresh=True)["size"]
            except FileNotFoundError:
                return None
            if size > limit:
                raise CnnpipeError(f"--root {self.url}: {self.key(local)} is over {limit:,} bytes, too large to be "
                                   "what it should be")
            return self.fs.cat_file(self.key(local))

    def download(self, local: Path, dest: Path) -> None:
        """Stream ``local``'s remote counterpart into the file ``dest``."""
        with self.calling("download", local):
            self.fs.get_file(self.key(local), str(dest))

    def upload_as(self, src: Path, local: Path) -> None:
        """Create ``local``'s remote counterpart from the file ``src`` (multipart when large); never overwrites."""
        with self.calling("upload", local):
            try:
                self.fs.put_file(str(src), self.key(local), mode="create", chunksize=PART_BYTES,
                                 max_concurrency=PARTS_IN_FLIGHT)
            except FileExistsError:
                raise CnnpipeError(f"--root {self.url}: {self.key(local)} already exists; another writer wrote "
                                   "where only this one may: nothing was replaced") from None

    def fetch_additions(self, version_dir: Path, added_later: tuple[str, ...]) -> None:
        """Download what a committed version gained remotely since it was mirrored (its signature,
        verify reports: names in ``added_later`` or under them), each at most ``MAX_ADDITION`` bytes."""
        for rel in self.find(version_dir):
            local = version_dir / rel
            if rel.split("/", 1)[0] not in added_later or local.exists() or ".." in rel.split("/"):
                continue
            data = self.read(local, MAX_ADDITION)
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.parent / f".{local.name}.{os.getpid()}.tmp"
            tmp.write_bytes(data or b"")
            os.replace(tmp, local)

    def create(self, local: Path, data: bytes) -> bool:
        """Write a small object only if none exists there (``If-None-Match: *``); whether it was written."""
        with self.calling("write", local):
            try:
                self.fs.pipe_file(self.key(local), data, mode="create")
            except FileExistsError:
                return False
        return True

    def advance(self, pointer: Path, number: int) -> None:
        """Set the ``latest`` pointer to ``vN`` unless it already names N or later (compare-and-swap)."""
        data = f"v{number}\n".encode()
        key = self.key(pointer)
        for _ in range(CAS_TRIES):
            with self.calling("update", pointer):
                try:
                    info = self.fs.info(key, refresh=True)
                except FileNotFoundError:
                    if self.create(pointer, data):
                        return
                    continue
                current = self.fs.cat_file(key).decode("ascii", "replace").strip()
                if current[1:].isdigit() and int(current[1:]) >= number:
                    return
                try:
                    self.fs.pipe_file(key, data, IfMatch=info["ETag"])
                    return
                except OSError:  # 412: it moved since we read it; read it again
                    continue
        raise CnnpipeError(f"--root {self.url}: could not move {key} forward after {CAS_TRIES} tries")

    def remove(self, local_dir: Path) -> None:
        """Delete every object under ``local_dir``'s counterpart (garbage collection only)."""
        with self.calling("delete", local_dir):
            self.fs.rm(self.key(local_dir), recursive=True)


def _cause(e: BaseException) -> str:
    if isinstance(e, PermissionError):
        return "access denied: check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    if isinstance(e, FileNotFoundError):
        return "not found"
    return f"{type(e).__name__}: {first_line(e)}"


def open_root(url: str) -> Path:
    """The local folder mirroring the remote root ``url``, after checking that it can be reached."""
    url = url.rstrip("/")
    for cache, mirror in _mirrors.items():
        if mirror.url == url:
            return cache
    scheme = url.split("://", 1)[0]
    try:
        import fsspec

        if scheme not in SCHEMES:
            fsspec.get_filesystem_class(scheme)  # an ImportError names the package a known scheme needs
            raise CnnpipeError(f"--root {url}: {scheme}:// is not supported for stores; use a folder or "
                               "s3://bucket/prefix (AWS S3, MinIO, Ceph…)")
        fs = fsspec.filesystem(scheme, config_kwargs=S3_CONFIG, skip_instance_cache=True)
    except ImportError as e:
        if scheme in SCHEMES:
            raise CnnpipeError(f"--root {url}: {scheme}:// needs {SCHEMES[scheme]}, which is not installed: "
                               "pip install 'cnnpipe[s3]'") from None
        raise CnnpipeError(f"--root {url}: {scheme}:// is not supported for stores ({first_line(e)}); use a folder "
                           "or s3://bucket/prefix (AWS S3, MinIO, Ceph…)") from None
    except ValueError:
        raise CnnpipeError(f"--root {url}: unknown URL scheme {scheme!r}; use a folder or s3://bucket/prefix") from None
    base = fs._strip_protocol(url).rstrip("/")
    bucket = base.split("/", 1)[0]
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise CnnpipeError(f"--root {url}: bucket {bucket!r} does not exist: create it first") from None
    except Exception as e:
        raise CnnpipeError(f"--root {url}: cannot reach the store: {_cause(e)}") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "aws"
    cache = cache_home() / "remote" / hashlib.sha256(f"{endpoint} {url}".encode()).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "ROOT").write_text(f"{url}\n")  # what this cache mirrors, for a person looking at it
    _mirrors[cache] = Mirror(url, fs, base, cache)
    return cache


def mirror_of(path: Path) -> Mirror | None:
    """The mirror whose cache holds ``path`` (None for a plain local store)."""
    for parent in (path, *path.parents):
        if parent in _mirrors:
            return _mirrors[parent]
    return None


def collect_garbage(mirror: Mirror, older_than: timedelta) -> list[str]:
    """Remove what killed writers left, older than ``older_than``: the objects of versions that were
    claimed but never completed (no manifest; the claim stays, so its number is never handed out
    again) and unfinished multipart uploads. Returns what was removed."""
    from .version import MANIFEST

    now = datetime.now(timezone.utc)
    objects = mirror.find(mirror.cache)
    removed = []
    for rel, info in sorted(objects.items()):
        head, _, claim = rel.rpartition(f"{CLAIMS}/")
        version = f"{head}{claim}"
        if not claim or "/" in claim or f"{version}/{MANIFEST}" in objects:
            continue
        if any(k.startswith(f"{version}/") for k in objects) and now - info["LastModified"] >= older_than:
            mirror.remove(mirror.cache / version)
            removed.append(f"{mirror.url}/{version}/")
    bucket, _, prefix = mirror.base.partition("/")
    with mirror.calling("list the unfinished uploads under", mirror.cache):
        uploads = mirror.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix).get("Uploads", [])
        for upload in uploads:
            if now - upload["Initiated"] >= older_than:
                mirror.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                removed.append(f"{mirror.url.split('://')[0]}://{bucket}/{upload['Key']} (unfinished upload)")
    return removed
