"""Versioned, immutable artifact stores (datasets, models, exports).

Protocol: a stage writes into a hidden temporary folder beside its target,
(owned through an ``flock`` its writer holds, see ``ownership``),
then ``commit`` fsyncs every file, writes ``manifest.json`` last and renames
the folder onto ``v<N>``. ``N`` is allocated under an ``fcntl.flock`` lock so
concurrent writers never share a number; nothing is ever overwritten, and the
``latest`` pointer is replaced atomically. A folder without a manifest is never
read as a version.

A root on object storage (``s3://…``) is mirrored by a local folder; a store there fetches the
versions it reads and publishes the ones it commits through ``remote.Mirror``, which keeps the
same promises without rename or ``flock`` (see ``remote``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CnnpipeError
from .ownership import OWNER, abandoned, owned
from .provenance import environment
from .remote import CLAIMS, Mirror, collect_garbage, mirror_of

SCHEMA = "cnnpipe.manifest/1"
MANIFEST = "manifest.json"
LATEST = "latest"
SIGNATURE = "bundle.sig"
REPORTS = "verify"
ADDED_LATER = (SIGNATURE, REPORTS)  # what a committed version may gain: its signature, verify's reports
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe artifact name, else raise a usage error."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise CnnpipeError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
            "(no '/', '..', spaces or control characters)"
        )
    return name


def sha256_file(path: Path, fsync: bool = False) -> str:
    """sha256 of a file's bytes; with ``fsync`` also flush it to disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON's null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON (no NaN or Infinity, which other parsers reject): a non-finite number is written as null."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (the stores' one JSON style)."""
    path.write_text(dumps(obj, indent=2, sort_keys=False) + "\n")


def write_through_memory(path: Path, save: Callable[[BinaryIO], Any]) -> None:
    """``save`` into memory, then write the bytes to ``path``: PyTorch's native zip writer
    (``torch.save``, ``torch.export.save``, ``torch.jit.save``) aborts the whole process when the
    disk fills under it, where Python's own write raises an OSError that can be reported."""
    buffer = io.BytesIO()
    save(buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def safe_member(base: Path, rel: str) -> Path:
    """Resolve ``rel`` inside ``base``; refuse absolute paths, '..', and symlinks."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts:
        raise CnnpipeError(f"{base}: manifest lists an unsafe path {rel!r}")
    path = base.joinpath(*parts)
    for p in [path, *path.parents]:
        if p == base:
            break
        if p.is_symlink():
            raise CnnpipeError(f"{p}: is a symbolic link; artifacts must hold plain files")
    return path


@dataclass(frozen=True)
class Version:
    """One committed, immutable version of an artifact."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def number(self) -> int:
        return int(self.manifest["version"])

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.number}"

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)

    @property
    def results(self) -> dict[str, Any]:
        return self.manifest.get("results", {})

    def lists(self, rel: str) -> bool:
        """Whether the manifest lists ``rel``."""
        return any(f["path"] == rel for f in self.manifest["files"])

    def file(self, rel: str) -> Path:
        """Path of a file the manifest lists."""
        if not any(f["path"] == rel for f in self.manifest["files"]):
            raise CnnpipeError(f"{self.path}: has no file {rel!r} (the manifest does not list it)")
        return safe_member(self.path, rel)

    def read_json(self, rel: str) -> dict[str, Any]:
        path = self.file(rel)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CnnpipeError(f"{path}: unreadable JSON ({e})") from None

    def check(self) -> None:
        """Re-hash every file the manifest lists; raise naming the first that differs."""
        for entry in self.manifest["files"]:
            path = safe_member(self.path, entry["path"])
            if not path.is_file():
                raise CnnpipeError(f"{path}: missing from {self.ref}; the version is damaged")
            size = path.stat().st_size
            if size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                raise CnnpipeError(
                    f"{path}: sha256 does not match the manifest of {self.ref} "
                    f"({size} bytes, expected {entry['bytes']}); the file was changed or "
                    "truncated: restore it or use another version"
                )


MANIFEST_TYPES = {"schema": str, "stage": str, "name": str, "version": int, "files": list}
FILE_TYPES = {"path": str, "sha256": str, "bytes": int}
MAX_MANIFEST = 16 * 2**20  # bytes; a manifest lists files, it is never this large
MAX_POINTER = 64  # bytes of a ``latest`` file ("v12\n")


def refuse_symlinks(*paths: Path) -> None:
    """A usage error if any of ``paths`` is a symbolic link (nothing is written through one)."""
    for path in paths:
        if path.is_symlink():
            raise CnnpipeError(f"{path}: is a symbolic link; artifacts must hold plain folders and files, and "
                               "nothing is written through a link")


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (no symlink, FIFO or device is opened,
    so a hostile one cannot hang or flood the reader); a usage error otherwise, never echoing content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise CnnpipeError(f"{path}: cannot be read as a plain file ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CnnpipeError(f"{path}: not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise CnnpipeError(f"{path}: over {limit:,} bytes, too large to be what it should be")
    return data


def _check_manifest(manifest: Any) -> None:
    """Raise ValueError describing (never quoting) the first part of a manifest of the wrong shape."""
    if not isinstance(manifest, dict):
        raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
    for key, kind in MANIFEST_TYPES.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise ValueError(f"key {key!r} is missing or not {'an' if kind.__name__[0] in 'aeiou' else 'a'} {kind.__name__}")
    for key in ("results", "lineage", "environment"):
        if not isinstance(manifest.get(key, {}), dict):
            raise ValueError(f"key {key!r} is not an object")
    if manifest["schema"] != SCHEMA:
        raise ValueError(f"an unknown schema, expected {SCHEMA!r}")
    for i, entry in enumerate(manifest["files"]):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in FILE_TYPES.items()):
            raise ValueError(f"files[{i}] is not a {{path, sha256, bytes}} record")


def load_version(path: Path, stage: str | None = None) -> Version:
    """Read the version at ``path``; ``stage`` restricts which kind it must be."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise CnnpipeError(f"{path}: not a cnnpipe version (no {MANIFEST})")
    try:
        data = read_small(manifest_path, MAX_MANIFEST)
    except OSError as e:
        raise CnnpipeError(f"{manifest_path}: unreadable manifest ({e.strerror})") from None
    return parse_version(path, data, stage)


def parse_version(path: Path, data: bytes, stage: str | None = None) -> Version:
    """The version at ``path`` whose manifest's bytes are ``data`` (checked for shape, never quoted)."""
    try:
        manifest = json.loads(data)
        _check_manifest(manifest)
    except ValueError as e:  # JSON errors name a position, not the content
        raise CnnpipeError(f"{path / MANIFEST}: corrupt manifest ({e})") from None
    if stage is not None and manifest["stage"] != stage:
        raise CnnpipeError(f"{path}: is a {manifest['stage']} artifact, expected a {stage} artifact")
    return Version(path=path, manifest=manifest)


def _remove_abandoned_drafts(name_dir: Path) -> None:
    """Delete the hidden drafts whose writer died (no live owner lock); called under the name lock."""
    for path in name_dir.glob(".tmp-*"):
        if path.is_dir() and not path.is_symlink() and abandoned(path):
            shutil.rmtree(path, ignore_errors=True)


FULL_BELOW = 64 * 1024  # bytes free under which a failed write is taken for a full disk
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


@contextmanager
def writing(dest: Path) -> Iterator[None]:
    """Report a write under ``dest`` that failed for want of space, inodes or permission as an
    ``OSError`` naming ``dest``, whatever raised it: a ``write()`` that names no file, a native
    writer's ``RuntimeError``, or an exporter's wrapped error on a disk found full."""
    try:
        yield
    except Exception as e:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            raise OSError(e.errno, e.strerror, e.filename or str(dest)) from None
        try:
            st = os.statvfs(dest)
        except OSError:
            raise e from None
        if st.f_favail == 0 or st.f_bavail * st.f_frsize < FULL_BELOW:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest)) from None
        raise


def _write_pointer(name_dir: Path, data: bytes) -> None:
    name_dir.mkdir(parents=True, exist_ok=True)
    tmp = name_dir / f".latest-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, name_dir / LATEST)


def publish_addition(path: Path) -> None:
    """Upload a file just added to a committed version (a signature, a verify report) where its
    store is remote; one already there is never replaced."""
    if mirror := mirror_of(path):
        mirror.upload_as(path, path)


@dataclass
class Draft:
    """A version being written: a hidden temporary folder that becomes ``v<N>`` on commit."""

    store: Store
    name: str
    path: Path
    version: Version | None = field(default=None, init=False)

    def commit(
        self,
        stage: str,
        roles: dict[str, str],
        lineage: dict[str, Any],
        results: dict[str, Any],
    ) -> Version:
        """Hash and fsync every file, write the manifest last, rename onto the next ``v<N>``."""
        files = []
        for path in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = path.relative_to(self.path).as_posix()
            if rel == OWNER:
                continue
            files.append(
                {
                    "path": rel,
                    "sha256": sha256_file(path, fsync=True),
                    "bytes": path.stat().st_size,
                    "role": roles.get(rel, "other"),
                }
            )
        name_dir = self.path.parent
        mirror = self.store.mirror
        with self.store.lock(self.name):
            number = self.store.claim(self.name) if mirror else self.store.next_number(self.name)
            manifest = {
                "schema": SCHEMA,
                "stage": stage,
                "name": self.name,
                "version": number,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": files,
                "lineage": lineage,
                "environment": environment(),
                "results": results,
            }
            manifest_path = self.path / MANIFEST
            with open(manifest_path, "w") as f:
                f.write(dumps(manifest, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            (self.path / OWNER).unlink()  # the lock stays held on the open file until the draft closes
            _fsync_dir(self.path)
            final = name_dir / f"v{number}"
            if mirror:  # the files, then the manifest: the version is visible once that exists
                for entry in files:
                    mirror.upload_as(self.path / entry["path"], final / entry["path"])
                mirror.upload_as(manifest_path, final / MANIFEST)
            os.rename(self.path, final)
            _fsync_dir(name_dir)
            self.store.set_latest(self.name, number)
            if mirror:
                mirror.advance(name_dir / LATEST, number)
        self.version = Version(path=final, manifest=manifest)
        return self.version


class Store:
    """One store folder (``data/``, ``models/`` or ``exports/``) of named, versioned artifacts."""

    def __init__(self, root: Path, stage: str, what: str, hint: str):
        self.root = Path(root)
        self.stage = stage
        self.what = what
        self.hint = hint
        self.mirror: Mirror | None = mirror_of(self.root)

    def _name_dir(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the per-name lock that serializes version allocation."""
        name_dir = self._name_dir(name)
        name_dir.mkdir(parents=True, exist_ok=True)
        with open(name_dir / ".lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def next_number(self, name: str) -> int:
        """The next free version number (every ``v<N>`` folder counts, complete or not)."""
        taken = [
            int(m.group(1))
            for p in self._name_dir(name).iterdir()
            if (m := _VERSION_RE.match(p.name))
        ]
        return max(taken, default=0) + 1

    def claim(self, name: str) -> int:
        """The next version number of a remote store, claimed by a conditional write of its marker
        (a writer that loses the race takes the next number)."""
        assert self.mirror is not None
        name_dir = self._name_dir(name)
        taken = [int(m.group(1)) for entry in self.mirror.listdir(name_dir / CLAIMS) + self.mirror.listdir(name_dir)
                 if (m := _VERSION_RE.match(entry))]
        number = max(taken, default=0) + 1
        while not self.mirror.create(name_dir / CLAIMS / f"v{number}", b""):
            number += 1
        return number

    def _fetch(self, name: str, version: str) -> None:
        """Bring a remote version into the local mirror (each file checked against its manifest),
        then any verify report or signature added to it since."""
        if self.mirror is None:
            return
        local = self._name_dir(name) / version
        if not (local / MANIFEST).is_file():
            data = self.mirror.read(local / MANIFEST, MAX_MANIFEST)
            if data is None:
                return
            with self.draft(name) as draft:
                (draft.path / MANIFEST).write_bytes(data)
                fetched = load_version(draft.path, self.stage)
                for entry in fetched.manifest["files"]:
                    dest = safe_member(draft.path, entry["path"])
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.mirror.download(local / entry["path"], dest)
                try:
                    fetched.check()
                except CnnpipeError as e:
                    raise CnnpipeError(f"{self.mirror.url}: {name}@{version} as downloaded: {e}") from None
                (draft.path / OWNER).unlink()
                try:
                    os.rename(draft.path, local)
                except OSError:  # another process fetched it first
                    if not (local / MANIFEST).is_file():
                        raise
        self.mirror.fetch_additions(local, ADDED_LATER)

    def set_latest(self, name: str, number: int) -> None:
        _write_pointer(self._name_dir(name), f"v{number}\n".encode())

    @contextmanager
    def draft(self, name: str) -> Iterator[Draft]:
        """A temporary folder to write a version into; removed unless committed. Nothing is written
        through a symbolic link (an ``eval/`` inside a version pointing elsewhere)."""
        name_dir = self._name_dir(name)
        refuse_symlinks(self.root, name_dir)
        with ExitStack() as owner:
            with self.lock(name):  # sweeping and taking ownership never interleave
                _remove_abandoned_drafts(name_dir)
                draft = Draft(self, name, Path(tempfile.mkdtemp(prefix=".tmp-", dir=name_dir)))
                owner.enter_context(owned(draft.path, "this draft"))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(draft.path, 0o777 & ~umask)  # mkdtemp makes it private; a version is for every reader
            try:
                with writing(name_dir):
                    yield draft
            finally:
                if draft.version is None:
                    shutil.rmtree(draft.path, ignore_errors=True)

    def names(self) -> list[str]:
        if self.mirror:
            return [n for n in self.mirror.listdir(self.root) if _NAME_RE.fullmatch(n)]
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.fullmatch(p.name))

    def _remote_listing(self, name: str) -> list[tuple[int, Version | str]]:
        """Each remote version of ``name`` read from its manifest alone (its files are fetched when
        the version is used), or the reason it cannot be read; oldest first."""
        assert self.mirror is not None
        name_dir = self._name_dir(name)
        found: list[tuple[int, Version | str]] = []
        for entry in self.mirror.listdir(name_dir):
            if not (m := _VERSION_RE.match(entry)):
                continue
            local = name_dir / entry
            try:
                if (local / MANIFEST).is_file():
                    found.append((int(m.group(1)), load_version(local, self.stage)))
                elif (data := self.mirror.read(local / MANIFEST, MAX_MANIFEST)) is not None:
                    found.append((int(m.group(1)), parse_version(local, data, self.stage)))
            except CnnpipeError as e:
                found.append((int(m.group(1)), str(e)))
        return sorted(found, key=lambda item: item[0])

    def versions(self, name: str) -> list[Version]:
        """Committed versions of ``name``, oldest first (on object storage: by their manifests; ``get``
        fetches a version's files)."""
        if self.mirror:
            listed = self._remote_listing(name)
            if damaged := [reason for _, reason in listed if isinstance(reason, str)]:
                raise CnnpipeError(damaged[0])
            return [version for _, version in listed if not isinstance(version, str)]
        name_dir = self._name_dir(name)
        if not name_dir.is_dir():
            return []
        found = []
        for p in name_dir.iterdir():
            m = _VERSION_RE.match(p.name)
            if m and p.is_dir() and not p.is_symlink() and (p / MANIFEST).is_file():
                found.append((int(m.group(1)), p))
        return [load_version(p, self.stage) for _, p in sorted(found)]

    def listing(self, name: str) -> list[tuple[int, Version | str]]:
        """Every version folder of ``name``, oldest first, as a Version or, for a damaged one, the reason."""
        if self.mirror:
            return self._remote_listing(name)
        name_dir = self._name_dir(name)
        found = sorted((int(m.group(1)), p) for p in (name_dir.iterdir() if name_dir.is_dir() else [])
                       if (m := _VERSION_RE.match(p.name)) and p.is_dir() and not p.is_symlink())
        out: list[tuple[int, Version | str]] = []
        for number, p in found:
            try:
                out.append((number, load_version(p, self.stage)))
            except CnnpipeError as e:
                out.append((number, str(e)))
        return out

    def has(self, name: str) -> bool:
        """Whether ``name`` has a ``latest`` version."""
        if self.mirror:
            return self.mirror.read(self._name_dir(name) / LATEST, MAX_POINTER) is not None
        return (self._name_dir(name) / LATEST).is_file()

    def latest(self, name: str) -> Version:
        name_dir = self._name_dir(name)
        pointer = name_dir / LATEST
        if self.mirror and (data := self.mirror.read(pointer, MAX_POINTER)) is not None:
            _write_pointer(name_dir, data)
        if not pointer.is_file():
            known = ", ".join(self.names()) or "none"
            raise CnnpipeError(f"no {self.what} named {name!r} in {self.root}/ (it holds: {known}); {self.hint}")
        try:
            version = read_small(pointer, MAX_POINTER).decode("ascii").strip()
        except UnicodeDecodeError:
            version = ""
        if not _VERSION_RE.match(version):
            raise CnnpipeError(f"{pointer}: does not name a version (v1, v2, …); the store is damaged: "
                               f"write the newest version's name into it, or use {name}@vN")
        return self.get(name, version)

    def get(self, name: str, version: str) -> Version:
        m = _VERSION_RE.match(version)
        if not m:
            raise CnnpipeError(f"invalid version {version!r}: use v1, v2, … or latest")
        self._fetch(name, version)
        path = self._name_dir(name) / version
        if not (path / MANIFEST).is_file() or path.is_symlink():
            have = ", ".join(f"v{v.number}" for v in self.versions(name)) or "none"
            raise CnnpipeError(f"{name}@{version} does not exist in {self.root} (versions: {have})")
        return load_version(path, self.stage)

    def resolve(self, ref: str) -> Version:
        """Resolve ``NAME``, ``NAME@latest``, ``NAME@vN`` or a path to a version folder."""
        if "/" in ref or ref.startswith("."):
            return load_version(Path(ref), self.stage)
        name, _, version = ref.partition("@")
        check_name(name, f"{self.what} name")
        if version in ("", "latest"):
            return self.latest(name)
        return self.get(name, version)


@dataclass(frozen=True)
class Workspace:
    """The three stores under one root folder: ``data/``, ``models/`` and ``exports/``."""

    root: Path

    def __post_init__(self) -> None:
        if Path(self.root).exists() and not Path(self.root).is_dir():
            raise CnnpipeError(f"--root {self.root} is a file, not a folder; give the folder that holds (or will "
                               "hold) data/, models/ and exports/")

    def collect_garbage(self, older_than: timedelta) -> list[str]:
        """Remove what killed writers left behind: drafts no live process owns (any age) in a local
        root; abandoned uploads older than ``older_than`` on object storage. Returns what was removed."""
        if mirror := mirror_of(Path(self.root)):
            return collect_garbage(mirror, older_than)
        stores = [store for store in (self.data, self.models, self.exports) if store.root.is_dir()]
        if not stores:
            raise CnnpipeError(f"--root {self.root}: holds no data/, models/ or exports/; give the root the stages wrote")
        removed = []
        for store in stores:
            for name in store.names():
                before = set(store._name_dir(name).glob(".tmp-*"))
                with store.lock(name):
                    _remove_abandoned_drafts(store._name_dir(name))
                removed += [str(p) for p in sorted(before) if not p.exists()]
        return removed

    @property
    def data(self) -> Store:
        return Store(Path(self.root) / "data", "download", "dataset", "download it first")

    @property
    def models(self) -> Store:
        return Store(Path(self.root) / "models", "train", "model", "train one first")

    @property
    def exports(self) -> Store:
        return Store(Path(self.root) / "exports", "export", "export bundle", "export one first")
