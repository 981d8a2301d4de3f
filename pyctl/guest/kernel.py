"""Check that a kernel image is the one we expect before booting it.

ppc64: the ELF ``vmlinux`` (machine, endianness, class, and the
``Linux version <release>`` banner inside).  x86_64: the bzImage's setup
header ("HdrS") and its kernel_version string.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyctl.guest import GuestBuildError
from pyctl.guest.modules import ElfTarget

_BANNER = re.compile(rb"Linux version (\S+) \([^\0\n]*")


def vmlinux_banner(path: Path, release: str, target: ElfTarget) -> str:
    """Check an ELF vmlinux and return its version banner."""
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            got = (str(elf["e_machine"]), bool(elf.little_endian), int(elf.elfclass))
            etype = str(elf["e_type"])
    except (ELFError, OSError) as exc:
        raise GuestBuildError(f"{path}: not a readable ELF kernel: {exc}") from exc
    want = (target.machine, target.little_endian, target.elfclass)
    if got != want:
        raise GuestBuildError(f"{path}: kernel ELF is {got}, expected {want}")
    if etype not in ("ET_EXEC", "ET_DYN"):
        raise GuestBuildError(f"{path}: ELF type {etype} is not an executable kernel")
    return _banner_for(path, path.read_bytes(), release)


def bzimage_banner(path: Path, release: str) -> str:
    """Check an x86 bzImage and return its kernel_version string."""
    data = path.read_bytes()
    if len(data) < 0x300 or data[0x202:0x206] != b"HdrS":
        raise GuestBuildError(f"{path}: no Linux boot protocol header (HdrS): not a bzImage")
    (offset,) = struct.unpack_from("<H", data, 0x20E)
    start = offset + 0x200
    end = data.find(b"\0", start, start + 512)
    if offset == 0 or end < 0:
        raise GuestBuildError(f"{path}: bzImage has no kernel_version string")
    version = data[start:end].decode("ascii", "replace")
    got = version.split(" ", 1)[0]
    if got != release:
        raise GuestBuildError(f"{path}: bzImage is {got!r}, expected {release!r}")
    return version


def _banner_for(path: Path, data: bytes, release: str) -> str:
    found = []
    for m in _BANNER.finditer(data):
        if m.group(1) == release.encode():
            return m.group(0).decode("ascii", "replace")
        found.append(m.group(1).decode("ascii", "replace"))
    if found:
        raise GuestBuildError(f"{path}: kernel banner says {found[0]!r}, expected {release!r}")
    raise GuestBuildError(f"{path}: no 'Linux version' banner found: not a Linux kernel")
