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

import fcntl
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError, RollbackWarning
from ..fs import dumps, fsync_dir, read_small, refuse_symlinks, sha256_file, writing
from .ownership import OWNER, abandoned, owned
from .provenance import environment
from .remote import CLAIMS, Mirror, collect_garbage, mirror_of
from .version import (
    ADDED_LATER,
    LATEST,
    MANIFEST,
    MAX_MANIFEST,
    MAX_POINTER,
    NAME_RE,
    SCHEMA,
    VERSION_RE,
    Version,
    check_name,
    load_version,
    parse_version,
    safe_member,
)


def _remove_abandoned_drafts(name_dir: Path) -> None:
    """Delete the hidden drafts whose writer died (no live owner lock); called under the name lock."""
    for path in name_dir.glob(".tmp-*"):
        if path.is_dir() and not path.is_symlink() and abandoned(path):
            shutil.rmtree(path, ignore_errors=True)


def _write_pointer(name_dir: Path, data: bytes) -> None:
    name_dir.mkdir(parents=True, exist_ok=True)
    tmp = name_dir / f".latest-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, name_dir / LATEST)


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
        packages: tuple[str, ...] = (),
    ) -> Version:
        """Hash and fsync every file, write the manifest last, rename onto the next ``v<N>``;
        the environment records the versions of ``packages`` too (an export's runtimes)."""
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
                "environment": environment(packages),
                "results": results,
            }
            manifest_path = self.path / MANIFEST
            with open(manifest_path, "w") as f:
                f.write(dumps(manifest, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            (self.path / OWNER).unlink()  # the lock stays held on the open file until the draft closes
            fsync_dir(self.path)
            final = name_dir / f"v{number}"
            if mirror:  # the files, then the manifest: the version is visible once that exists
                for entry in files:
                    mirror.upload_as(self.path / entry["path"], final / entry["path"])
                mirror.upload_as(manifest_path, final / MANIFEST)
            os.rename(self.path, final)
            fsync_dir(name_dir)
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
            if (m := VERSION_RE.match(p.name))
        ]
        return max(taken, default=0) + 1

    def claim(self, name: str) -> int:
        """The next version number of a remote store, claimed by a conditional write of its marker
        (a writer that loses the race takes the next number)."""
        assert self.mirror is not None
        name_dir = self._name_dir(name)
        taken = [int(m.group(1)) for entry in self.mirror.listdir(name_dir / CLAIMS) + self.mirror.listdir(name_dir)
                 if (m := VERSION_RE.match(entry))]
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
                    fetched.rehash()
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
            return [n for n in self.mirror.listdir(self.root) if NAME_RE.fullmatch(n)]
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name))

    def _remote_listing(self, name: str) -> list[tuple[int, Version | str]]:
        """Each remote version of ``name`` read from its manifest alone (its files are fetched when
        the version is used), or the reason it cannot be read; oldest first."""
        assert self.mirror is not None
        name_dir = self._name_dir(name)
        found: list[tuple[int, Version | str]] = []
        for entry in self.mirror.listdir(name_dir):
            if not (m := VERSION_RE.match(entry)):
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
            m = VERSION_RE.match(p.name)
            if m and p.is_dir() and not p.is_symlink() and (p / MANIFEST).is_file():
                found.append((int(m.group(1)), p))
        return [load_version(p, self.stage) for _, p in sorted(found)]

    def listing(self, name: str) -> list[tuple[int, Version | str]]:
        """Every version folder of ``name``, oldest first, as a Version or, for a damaged one, the reason."""
        if self.mirror:
            return self._remote_listing(name)
        name_dir = self._name_dir(name)
        found = sorted((int(m.group(1)), p) for p in (name_dir.iterdir() if name_dir.is_dir() else [])
                       if (m := VERSION_RE.match(p.name)) and p.is_dir() and not p.is_symlink())
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
        if not VERSION_RE.match(version):
            raise CnnpipeError(f"{pointer}: does not name a version (v1, v2, …); the store is damaged: "
                               f"write the newest version's name into it, or use {name}@vN")
        chosen = self.get(name, version)
        newest = max((v.number for v in self.versions(name)), default=chosen.number)
        if newest > chosen.number:
            warnings.warn(RollbackWarning(f"{name}: latest names v{chosen.number}, but v{newest} is its newest complete "
                                          f"version; say which with {name}@v{newest} or {name}@v{chosen.number}"),
                          stacklevel=2)
        return chosen

    def get(self, name: str, version: str) -> Version:
        m = VERSION_RE.match(version)
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


def evaluation_store(version: Path) -> Store:
    """The store of the model version at ``version``'s evaluations (``eval/``), one name per split."""
    return Store(version / "eval", "evaluate", "evaluation", "run `cnnpipe evaluate`")


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
        for store in stores + self._evaluation_stores():
            for name in store.names():
                before = set(store._name_dir(name).glob(".tmp-*"))
                with store.lock(name):
                    _remove_abandoned_drafts(store._name_dir(name))
                removed += [str(p) for p in sorted(before) if not p.exists()]
        return removed

    def _evaluation_stores(self) -> list[Store]:
        """The evaluation stores nested in model versions (``models/NAME/vN/eval/``); none reached through a link."""
        models = self.models
        found = []
        for name in models.names() if models.root.is_dir() else []:
            for version in sorted(models._name_dir(name).glob("v*")):
                folder = version / "eval"
                if VERSION_RE.fullmatch(version.name) and not version.is_symlink() and folder.is_dir() \
                        and not folder.is_symlink():
                    found.append(evaluation_store(version))
        return found

    @property
    def data(self) -> Store:
        return Store(Path(self.root) / "data", "download", "dataset", "download it first")

    @property
    def models(self) -> Store:
        return Store(Path(self.root) / "models", "train", "model", "train one first")

    @property
    def exports(self) -> Store:
        return Store(Path(self.root) / "exports", "export", "export bundle", "export one first")
