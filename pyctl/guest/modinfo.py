"""Read a Linux kernel module: decompress it and parse its ELF ``.modinfo``.

``.modinfo`` is a sequence of NUL-terminated ``key=value`` strings; a key may
repeat (alias=, parm=).  We need ``name``, ``depends`` and ``vermagic``.
"""

from __future__ import annotations

import gzip
import io
import lzma
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyctl.guest import GuestBuildError

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_name_from_path(path: Path | str) -> str:
    """``.../nvme-core.ko.xz`` -> ``nvme_core`` (the kernel treats - and _ alike)."""
    base = Path(path).name
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            return normalize(base[: -len(suffix)])
    raise GuestBuildError(f"{path}: not a kernel module file (expected one of {MODULE_SUFFIXES})")


def normalize(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True)
class ModInfo:
    name: str
    depends: tuple[str, ...]
    vermagic: str
    elf_machine: str
    little_endian: bool
    elfclass: int

    @property
    def kernel_release(self) -> str:
        """The first word of vermagic is the kernel release the module was built for."""
        return self.vermagic.split(" ", 1)[0]


def decompress_module(path: Path) -> bytes:
    """The plain ELF bytes of a module file, whatever its compression."""
    raw = path.read_bytes()
    name = path.name
    try:
        if name.endswith(".ko.xz"):
            return lzma.decompress(raw)
        if name.endswith(".ko.gz"):
            return gzip.decompress(raw)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise GuestBuildError(f"{path}: corrupt compressed module: {exc}") from exc
    if name.endswith(".ko.zst"):
        raise GuestBuildError(
            f"{path}: zstd-compressed modules are not supported (Python has no zstd in the "
            "standard library); use a kernel package with xz or gzip modules"
        )
    if name.endswith(".ko"):
        return raw
    raise GuestBuildError(f"{path}: not a kernel module file")


def parse_modinfo(elf_bytes: bytes, origin: str) -> ModInfo:
    """Parse the ``.modinfo`` of an (uncompressed) module; ``origin`` names it in errors."""
    try:
        elf = ELFFile(io.BytesIO(elf_bytes))
        section = elf.get_section_by_name(".modinfo")
        machine = str(elf["e_machine"])
        little = bool(elf.little_endian)
        elfclass = int(elf.elfclass)
        data = section.data() if section is not None else None
    except (ELFError, ValueError, EOFError) as exc:
        raise GuestBuildError(f"{origin}: not a valid ELF kernel module: {exc}") from exc
    if data is None:
        raise GuestBuildError(f"{origin}: ELF file has no .modinfo section (not a kernel module)")
    fields: dict[str, str] = {}
    for item in data.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep and key not in fields:
            fields[key] = value
    if "vermagic" not in fields:
        raise GuestBuildError(f"{origin}: .modinfo has no vermagic= entry")
    name = fields.get("name") or module_name_from_path(origin)
    depends = tuple(normalize(d) for d in fields.get("depends", "").split(",") if d)
    return ModInfo(
        name=normalize(name),
        depends=depends,
        vermagic=fields["vermagic"].strip(),
        elf_machine=machine,
        little_endian=little,
        elfclass=elfclass,
    )


def read_module(path: Path) -> tuple[ModInfo, bytes]:
    """Decompress ``path`` and parse its modinfo; returns (info, ELF bytes)."""
    data = decompress_module(path)
    return parse_modinfo(data, str(path)), data
