"""One committed version of an artifact: its manifest (checked for shape, never quoted), its
files (resolved inside the version only) and the names every store shares."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError
from ..fs import read_small, sha256_file

SCHEMA = "cnnpipe.manifest/1"
MANIFEST = "manifest.json"
LATEST = "latest"
SIGNATURE = "bundle.sig"
REPORTS = "verify"
ADDED_LATER = (SIGNATURE, REPORTS)  # what a committed version may gain: its signature, verify's reports
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe artifact name, else raise a usage error."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise CnnpipeError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
            "(no '/', '..', spaces or control characters)"
        )
    return name


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

    def rehash(self) -> None:
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
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in FILE_TYPES.items()) \
                or not isinstance(entry.get("role", ""), str):
            raise ValueError(f"files[{i}] is not a {{path, sha256, bytes, role}} record")
    _check_records(manifest.get("lineage", {}), manifest.get("results", {}))


def _check_records(lineage: dict[str, Any], results: dict[str, Any]) -> None:
    """The lineage and results fields stages read have their shapes (ValueError naming the first that has not)."""
    parents = lineage.get("parents", [])
    if not isinstance(parents, list) or not all(
            isinstance(p, dict) and isinstance(p.get("ref"), str) and isinstance(p.get("manifest_sha256"), str)
            for p in parents):
        raise ValueError("lineage.parents is not a list of {ref, manifest_sha256} records")
    for key in ("config", "git"):
        if not isinstance(lineage.get(key, {}), dict):
            raise ValueError(f"lineage.{key} is not an object")
    formats = results.get("formats", [])
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise ValueError("results.formats is not a list of format names")
    pinned = lineage.get("config", {}).get("evaluation")
    if pinned is not None and not (isinstance(pinned, dict) and isinstance(pinned.get("split"), str)
                                   and type(pinned.get("version")) is int and isinstance(pinned.get("manifest_sha256"), str)):
        raise ValueError("lineage.config.evaluation is not a {split, version, manifest_sha256} record")


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
