"""Confine the current process, through the kernel interfaces themselves (no helper binary).

``confine(read, write)`` is called by a verify worker before it opens anything of a bundle:

- **Landlock** (Linux 5.13+): from then on the process may open for reading only files under
  ``read`` (and ``write``), and create, write, rename or remove only under ``write``; with
  Landlock ABI 4+ it may neither bind nor connect a TCP socket, with ABI 6+ neither signal
  nor reach an abstract Unix socket outside itself. Root is bound too.
- **seccomp**: ``socket()`` of any family but ``AF_UNIX`` fails with ``EACCES`` (UDP, raw
  sockets, netlink), ``io_uring_setup`` with ``ENOSYS``, and a system call made through
  another architecture's entry (a 32-bit ``int 0x80``) fails.

Both are irreversible and inherited by children. Where the kernel lacks Landlock the
process is still a separate one (a crash or exit ends only it) and the returned
``Confinement`` says what was not applied; verify writes that into its report.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2

# Landlock's file-system rights, by the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | (1 << 14) | (1 << 15)  # the rights a rule on a file may hold
_NET_TCP = (1 << 0) | (1 << 1)  # bind, connect
_SCOPES = (1 << 0) | (1 << 1)  # abstract Unix sockets, signals
READ = EXECUTE | READ_FILE | READ_DIR

# (audit arch, socket, io_uring_setup) for the machines this runs on
_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}
_AF_UNIX = 1


@dataclass(frozen=True)
class Confinement:
    """What ``confine`` applied: the Landlock ABI (0: none) and whether seccomp closed the network."""

    landlock_abi: int
    seccomp: bool

    def describe(self) -> str:
        parts = [f"landlock ABI {self.landlock_abi}" if self.landlock_abi else "no landlock (kernel lacks it)"]
        parts.append("seccomp: no sockets but AF_UNIX" if self.seccomp else f"no seccomp filter on {platform.machine()}")
        return ", ".join(parts)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI this kernel offers (0: none, or disabled)."""
    result = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, result)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _landlock(abi: int, read: Iterable[Path], write: Iterable[Path]) -> None:
    libc = _libc()
    fs = _FS_BY_ABI[max(k for k in _FS_BY_ABI if k <= abi)]
    attr = struct.pack("QQQ", fs, _NET_TCP if abi >= 4 else 0, _SCOPES if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(libc.syscall(_SYS_CREATE_RULESET, ctypes.c_char_p(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)),
                     "landlock_create_ruleset")
    try:
        for paths, rights in ((read, READ & fs), (write, fs)):
            for path in paths:
                _allow(libc, ruleset, Path(path), rights)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        _check(libc.syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _allow(libc: ctypes.CDLL, ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path this machine does not have
    try:
        if not path.is_dir():
            rights &= _FILE_RIGHTS
        rule = struct.pack("=Qi", rights, fd)
        _check(libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.c_char_p(rule), ctypes.c_uint32(0)),
               f"landlock_add_rule {path}")
    finally:
        os.close(fd)


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _seccomp() -> bool:
    """Install the socket filter; False on a machine whose system call numbers are not in ``_ARCH``."""
    arch = _ARCH.get(platform.machine())
    if arch is None:
        return False
    audit, socket_nr, uring_nr = arch
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, eacces, enosys = 0x7FFF0000, 0x00050000 | errno.EACCES, 0x00050000 | errno.ENOSYS
    program = b"".join([
        _bpf(ld, 4),  # seccomp_data.arch
        _bpf(jeq, audit, 1, 0),
        _bpf(ret, eacces),  # another architecture's entry point
        _bpf(ld, 0),  # seccomp_data.nr
        _bpf(jge, 0x40000000, 0, 1),  # the x32 ABI's numbers
        _bpf(ret, eacces),
        _bpf(jeq, uring_nr, 0, 1),
        _bpf(ret, enosys),
        _bpf(jeq, socket_nr, 0, 3),
        _bpf(ld, 16),  # args[0] (low half): the address family
        _bpf(jeq, _AF_UNIX, 1, 0),
        _bpf(ret, eacces),
        _bpf(ret, allow),
    ])
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(buffer))
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0), "prctl(SECCOMP)")
    return True


def confine(read: Iterable[Path], write: Iterable[Path]) -> Confinement:
    """Restrict this process for good: read only under ``read``, write only under ``write``, no network."""
    abi = landlock_abi()
    if abi:
        _landlock(abi, list(read), list(write))
    return Confinement(abi, _seccomp())
