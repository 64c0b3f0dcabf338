"""What a zip archive torch reads (``model.pt2``, an AOTInductor package, TorchScript) may hold,
checked before torch sees it.

Every such archive first passes ``check_sizes``: torch's reader allocates what a member
declares, so members that declare more bytes than the archive could hold (a zip bomb) fail
the format unread. Then, for a ``torch.export`` archive:

``torch.export.load`` unpickles members (weights or constants marked ``use_pickle``, custom
and opaque objects, sample inputs: ``torch.load`` falling back from ``weights_only=True``)
and loads an AOTInductor library found in the archive. The inventory reads only the zip
directory, the two small JSON configs and the sample inputs' pickle opcodes (never executed):
a member outside what ``torch.export.save`` writes for a program and its tensors, a
pickled weight or constant, or a sample input that imports anything but torch's tensor
rebuilders fails the format, unread.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from pathlib import Path

from ..errors import LoadFailed

MAX_MEMBERS = 100_000
MAX_EXPANSION = 4  # declared bytes per byte on disk: torch writes its members stored, or deflated code (~1.04x)
SLACK = 1 << 20  # bytes: small archives may hold a few deflated text members
MAX_CONFIG = 64 << 20  # bytes of a weights or constants config
MAX_PICKLE = 1 << 20  # bytes of the sample inputs' pickle
MEMBER = re.compile(
    r"[\w.-]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|extra/[\w.-]+"
    r"|data/weights/(weight_\d+|[\w.-]+_weights_config\.json)"
    r"|data/constants/(tensor_\d+|[\w.-]+_constants_config\.json)"
    r"|data/sample_inputs/[\w.-]+\.pt)"
)
PAYLOAD = re.compile(r"(weight|tensor)_\d+")
SAMPLE_GLOBALS = {"torch._utils _rebuild_tensor_v2", "collections OrderedDict"}
STORAGE = re.compile(r"torch (Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool)Storage")


def check_sizes(path: Path, kind: str) -> None:
    """``LoadFailed`` when the zip at ``path`` (a ``kind``, named in the error) has too many members or
    declares more bytes than ``MAX_EXPANSION`` times its size on disk: read only from its directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise LoadFailed(f"{path.name}: not a readable {kind} ({type(e).__name__})") from None
    if len(members) > MAX_MEMBERS:
        raise LoadFailed(f"{path.name}: {len(members):,} archive members; refused unread")
    declared, size = sum(m.file_size for m in members), path.stat().st_size
    if declared > MAX_EXPANSION * size + SLACK:
        raise LoadFailed(f"{path.name}: its members declare {declared:,} bytes, more than {MAX_EXPANSION}x its "
                         f"{size:,} bytes on disk (a zip bomb); refused unread")


def check_pt2(path: Path) -> None:
    """``LoadFailed`` naming the member when ``path`` holds anything a program archive should not."""
    check_sizes(path, "torch.export archive")
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not MEMBER.fullmatch(member.filename):
                    raise LoadFailed(f"{path.name}: member {member.filename!r} is not part of a torch.export program "
                                     "(native code, a pickle or a foreign file); refused unread")
                if member.filename.endswith(("_weights_config.json", "_constants_config.json")):
                    _check_config(path, archive, member)
                elif "/data/sample_inputs/" in member.filename:
                    _check_sample_inputs(path, archive, member)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        raise LoadFailed(f"{path.name}: not a readable torch.export archive ({type(e).__name__})") from None


def _read(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> bytes:
    if member.file_size > limit:
        raise LoadFailed(f"{member.filename}: {member.file_size} bytes, more than {limit} allowed; refused unread")
    with archive.open(member) as f:
        return f.read(limit + 1)[:limit]


def _check_config(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    config = json.loads(_read(archive, member, MAX_CONFIG)).get("config", {})
    for name, payload in config.items():
        if payload.get("use_pickle") or not PAYLOAD.fullmatch(str(payload.get("path_name", ""))):
            raise LoadFailed(f"{path.name}: {name!r} in {member.filename} is stored as a pickle or a custom object, "
                             "which torch would unpickle; refused unread")


def _check_sample_inputs(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    inner = zipfile.ZipFile(io.BytesIO(_read(archive, member, MAX_PICKLE * 16)))
    for item in inner.infolist():
        if not item.filename.endswith(".pkl"):
            continue
        for op, arg, _ in pickletools.genops(_read(inner, item, MAX_PICKLE)):
            if "GLOBAL" in op.name and not (op.name == "GLOBAL" and (arg in SAMPLE_GLOBALS or STORAGE.fullmatch(arg))):
                raise LoadFailed(f"{path.name}: {member.filename} imports {arg or 'a name from the stack'} when "
                                 "unpickled; refused unread")
            if op.name in ("INST", "OBJ", "EXT1", "EXT2", "EXT4"):
                raise LoadFailed(f"{path.name}: {member.filename} builds objects when unpickled ({op.name}); refused unread")
