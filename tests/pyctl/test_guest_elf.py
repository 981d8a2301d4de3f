"""Module .modinfo parsing, dependency resolution and kernel checks on synthetic ELF files."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from pyctl.guest import GuestBuildError
from pyctl.guest.kernel import bzimage_banner, vmlinux_banner
from pyctl.guest.modinfo import decompress_module, module_name_from_path, parse_modinfo
from pyctl.guest.modules import ElfTarget, ModuleTree

EM_PPC64, EM_X86_64 = 21, 62
PPC = ElfTarget("EM_PPC64", little_endian=True)
REL = "6.12.107+deb13-powerpc64le"


def make_elf(
    sections: dict[str, bytes], machine: int = EM_PPC64, little: bool = True, etype: int = 1
) -> bytes:
    """A minimal ELF64 file with the given PROGBITS sections and a .shstrtab."""
    e = "<" if little else ">"
    names = [*sections, ".shstrtab"]
    shstrtab = b"\0" + b"".join(n.encode() + b"\0" for n in names)
    body = bytearray(64)
    placed = []
    for content in [*sections.values(), shstrtab]:
        placed.append((len(body), len(content)))
        body += content
    body += b"\0" * (-len(body) % 8)
    shoff = len(body)
    headers = bytes(64)
    for i, name in enumerate(names):
        off, size = placed[i]
        name_off = shstrtab.index(b"\0" + name.encode() + b"\0") + 1
        kind = 3 if name == ".shstrtab" else 1
        headers += struct.pack(e + "IIQQQQIIQQ", name_off, kind, 0, 0, off, size, 0, 0, 1, 0)
    ident = b"\x7fELF" + bytes([2, 1 if little else 2, 1, 0]) + bytes(8)
    hdr = ident + struct.pack(
        e + "HHIQQQIHHHHHH",
        etype,
        machine,
        1,
        0,
        0,
        shoff,
        0,
        64,
        0,
        0,
        64,
        len(names) + 1,
        len(names),
    )
    return hdr + bytes(body[64:]) + headers


def modinfo(**fields: str) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields.items())


def module(name: str, depends: str = "", release: str = REL, **kw: int | bool) -> bytes:
    vermagic = f"{release} SMP mod_unload modversions "
    info = modinfo(
        alias="pci:v*",
        depends=depends,
        intree="Y",
        name=name.replace("-", "_"),
        vermagic=vermagic,
    )
    return make_elf({".text": b"\0" * 16, ".modinfo": info}, **kw)  # type: ignore[arg-type]


# -- modinfo ---------------------------------------------------------------


def test_modinfo_fields_are_parsed_and_names_normalized() -> None:
    info = parse_modinfo(module("nvme-core", "nvme-auth,nvme-keyring"), "nvme-core.ko")
    assert info.name == "nvme_core"
    assert info.depends == ("nvme_auth", "nvme_keyring")
    assert info.kernel_release == REL
    assert (info.elf_machine, info.little_endian, info.elfclass) == ("EM_PPC64", True, 64)


def test_empty_depends_and_big_endian_x86_fields() -> None:
    info = parse_modinfo(module("a", machine=EM_X86_64, little=False), "a.ko")
    assert info.depends == ()
    assert (info.elf_machine, info.little_endian) == ("EM_X86_64", False)


def test_modinfo_errors_are_clear() -> None:
    with pytest.raises(GuestBuildError, match="not a valid ELF"):
        parse_modinfo(b"not an elf at all" * 10, "junk.ko")
    with pytest.raises(GuestBuildError, match=r"no \.modinfo section"):
        parse_modinfo(make_elf({".text": b"\0"}), "x.ko")
    with pytest.raises(GuestBuildError, match="no vermagic"):
        parse_modinfo(make_elf({".modinfo": modinfo(name="x", depends="")}), "x.ko")


def test_decompression_of_each_format(tmp_path: Path) -> None:
    raw = module("m")
    (tmp_path / "m.ko").write_bytes(raw)
    (tmp_path / "m.ko.xz").write_bytes(lzma.compress(raw, format=lzma.FORMAT_XZ))
    (tmp_path / "m.ko.gz").write_bytes(gzip.compress(raw))
    for name in ("m.ko", "m.ko.xz", "m.ko.gz"):
        assert decompress_module(tmp_path / name) == raw
    (tmp_path / "m.ko.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(GuestBuildError, match="zstd"):
        decompress_module(tmp_path / "m.ko.zst")
    (tmp_path / "bad.ko.xz").write_bytes(b"not xz")
    with pytest.raises(GuestBuildError, match="corrupt"):
        decompress_module(tmp_path / "bad.ko.xz")


def test_module_name_from_path() -> None:
    assert module_name_from_path("kernel/drivers/nvme/host/nvme-core.ko.xz") == "nvme_core"
    with pytest.raises(GuestBuildError):
        module_name_from_path("README")


# -- dependency resolution -------------------------------------------------


def tree(tmp_path: Path, mods: dict[str, bytes], builtin: tuple[str, ...] = ()) -> Path:
    moddir = tmp_path / "lib/modules" / REL
    (moddir / "kernel/drivers").mkdir(parents=True)
    for fname, data in mods.items():
        (moddir / "kernel/drivers" / f"{fname}.ko.xz").write_bytes(lzma.compress(data))
    (moddir / "modules.builtin").write_text("".join(f"kernel/{b}.ko\n" for b in builtin))
    return moddir


def test_dependencies_come_first_once_each_and_builtins_are_skipped(tmp_path: Path) -> None:
    moddir = tree(
        tmp_path,
        {
            "nvme": module("nvme", "nvme-core,hwmon"),
            "nvme-core": module("nvme-core", "nvme-auth,nvme-keyring"),
            "nvme-auth": module("nvme-auth", "nvme-keyring"),
            "nvme-keyring": module("nvme-keyring"),
            "unrelated": module("unrelated"),
        },
        builtin=("lib/hwmon",),
    )
    order = [m.info.name for m in ModuleTree(moddir, REL, PPC).resolve(["nvme"])]
    assert order == ["nvme_keyring", "nvme_auth", "nvme_core", "nvme"]
    resolved = ModuleTree(moddir, REL, PPC).resolve(["nvme"])
    assert resolved[-1].elf[:4] == b"\x7fELF", "modules are packed decompressed"


def test_a_builtin_wanted_module_resolves_to_nothing(tmp_path: Path) -> None:
    moddir = tree(tmp_path, {}, builtin=("drivers/nvme/host/nvme",))
    assert ModuleTree(moddir, REL, PPC).resolve(["nvme"]) == []


def test_missing_dependency_names_who_needs_it(tmp_path: Path) -> None:
    moddir = tree(tmp_path, {"nvme": module("nvme", "nvme-core")})
    with pytest.raises(GuestBuildError, match=r"module nvme_core \(needed by nvme\) not found"):
        ModuleTree(moddir, REL, PPC).resolve(["nvme"])
    with pytest.raises(GuestBuildError, match="module nope not found"):
        ModuleTree(moddir, REL, PPC).resolve(["nope"])


def test_vermagic_mismatch_is_refused(tmp_path: Path) -> None:
    moddir = tree(tmp_path, {"nvme": module("nvme", release="6.1.0-13-powerpc64le")})
    with pytest.raises(GuestBuildError, match=r"vermagic mismatch.*6\.1\.0-13-powerpc64le"):
        ModuleTree(moddir, REL, PPC).resolve(["nvme"])


def test_module_for_another_machine_is_refused(tmp_path: Path) -> None:
    moddir = tree(tmp_path, {"nvme": module("nvme", machine=EM_X86_64)})
    with pytest.raises(GuestBuildError, match="built for EM_X86_64"):
        ModuleTree(moddir, REL, PPC).resolve(["nvme"])


def test_dependency_cycle_is_reported(tmp_path: Path) -> None:
    moddir = tree(tmp_path, {"a": module("a", "b"), "b": module("b", "c"), "c": module("c", "a")})
    with pytest.raises(GuestBuildError, match="cycle: a -> b -> c -> a"):
        ModuleTree(moddir, REL, PPC).resolve(["a"])


def test_not_a_modules_tree(tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match="not a modules tree"):
        ModuleTree(tmp_path, REL, PPC)


# -- kernel images ---------------------------------------------------------

BANNER = f"Linux version {REL} (debian-kernel@lists.debian.org) (gcc 14) #1 SMP Debian"


def test_vmlinux_banner_machine_and_type(tmp_path: Path) -> None:
    good = tmp_path / "vmlinux"
    good.write_bytes(make_elf({".rodata": b"xx\0" + BANNER.encode() + b"\n\0"}, etype=2))
    assert vmlinux_banner(good, REL, PPC) == BANNER
    with pytest.raises(GuestBuildError, match=r"expected '6\.12\.999"):
        vmlinux_banner(good, "6.12.999", PPC)
    x86 = tmp_path / "x86"
    x86.write_bytes(make_elf({".rodata": BANNER.encode()}, machine=EM_X86_64, etype=2))
    with pytest.raises(GuestBuildError, match="EM_X86_64"):
        vmlinux_banner(x86, REL, PPC)
    big = tmp_path / "big"
    big.write_bytes(make_elf({".rodata": BANNER.encode()}, little=False, etype=2))
    with pytest.raises(GuestBuildError, match="expected"):
        vmlinux_banner(big, REL, PPC)
    rel = tmp_path / "rel"
    rel.write_bytes(make_elf({".rodata": BANNER.encode()}, etype=1))
    with pytest.raises(GuestBuildError, match="not an executable kernel"):
        vmlinux_banner(rel, REL, PPC)
    nob = tmp_path / "nobanner"
    nob.write_bytes(make_elf({".rodata": b"hello"}, etype=2))
    with pytest.raises(GuestBuildError, match="no 'Linux version' banner"):
        vmlinux_banner(nob, REL, PPC)
    (tmp_path / "text").write_text("not elf")
    with pytest.raises(GuestBuildError, match="not a readable ELF"):
        vmlinux_banner(tmp_path / "text", REL, PPC)


def bzimage(version: str) -> bytes:
    data = bytearray(0x4000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x1000)
    data[0x1200 : 0x1200 + len(version) + 1] = version.encode() + b"\0"
    return bytes(data)


def test_bzimage_version_string(tmp_path: Path) -> None:
    path = tmp_path / "vmlinuz"
    path.write_bytes(bzimage("6.12.107+deb13-amd64 (debian-kernel@lists.debian.org) #1 SMP"))
    assert bzimage_banner(path, "6.12.107+deb13-amd64").startswith("6.12.107+deb13-amd64 (")
    with pytest.raises(GuestBuildError, match=r"expected '6\.1\.0-amd64'"):
        bzimage_banner(path, "6.1.0-amd64")
    path.write_bytes(bytes(0x4000))
    with pytest.raises(GuestBuildError, match="not a bzImage"):
        bzimage_banner(path, "6.12.107+deb13-amd64")
