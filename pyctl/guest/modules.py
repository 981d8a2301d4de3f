"""Resolve kernel modules and their dependencies from an unpacked modules tree.

Works from ``lib/modules/<release>/`` of a kernel package: the ``kernel/``
tree of ``*.ko*`` files and ``modules.builtin`` (modules compiled into the
kernel, which need no file).  Dependencies come from each module's
``.modinfo depends=``; no modprobe/depmod is involved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pyctl.guest import GuestBuildError
from pyctl.guest.modinfo import (
    MODULE_SUFFIXES,
    ModInfo,
    module_name_from_path,
    normalize,
    read_module,
)


@dataclass(frozen=True)
class ElfTarget:
    """What every module (and the kernel) must be built for."""

    machine: str  # pyelftools e_machine name, e.g. EM_PPC64
    little_endian: bool
    elfclass: int = 64


@dataclass(frozen=True)
class ResolvedModule:
    info: ModInfo
    path: Path
    elf: bytes


def check_module(info: ModInfo, origin: str, release: str, target: ElfTarget) -> None:
    """Raise if the module was built for another kernel or another machine."""
    if info.kernel_release != release:
        raise GuestBuildError(
            f"{origin}: vermagic mismatch: module built for {info.kernel_release!r} "
            f"(vermagic {info.vermagic!r}), kernel is {release!r}; the kernel and module "
            "packages must come from the same linux-image version"
        )
    if (info.elf_machine, info.little_endian, info.elfclass) != (
        target.machine,
        target.little_endian,
        target.elfclass,
    ):
        endian = "little" if info.little_endian else "big"
        raise GuestBuildError(
            f"{origin}: built for {info.elf_machine} {endian}-endian ELF{info.elfclass}, "
            f"expected {target.machine} "
            f"{'little' if target.little_endian else 'big'}-endian ELF{target.elfclass}"
        )


class ModuleTree:
    """The modules of one kernel release, indexed by normalized name."""

    def __init__(self, moddir: Path, release: str, target: ElfTarget) -> None:
        if not (moddir / "kernel").is_dir():
            raise GuestBuildError(f"{moddir}: no kernel/ directory: not a modules tree")
        self.moddir = moddir
        self.release = release
        self.target = target
        self.files: dict[str, Path] = {}
        for path in sorted((moddir / "kernel").rglob("*.ko*")):
            if path.name.endswith(MODULE_SUFFIXES):
                self.files.setdefault(module_name_from_path(path), path)
        self.builtin: set[str] = set()
        builtin = moddir / "modules.builtin"
        if builtin.exists():
            for line in builtin.read_text().splitlines():
                if line.strip():
                    self.builtin.add(module_name_from_path(line.strip()))

    def resolve(self, wanted: Iterable[str]) -> list[ResolvedModule]:
        """The wanted modules plus dependencies, each after what it depends on.

        Built-in modules are skipped.  A module missing from both the tree and
        modules.builtin, a vermagic or ELF-target mismatch, or a dependency
        cycle raise GuestBuildError.
        """
        order: list[ResolvedModule] = []
        done: set[str] = set()
        cache: dict[str, ResolvedModule] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in done or name in self.builtin:
                return
            if name in chain:
                cycle = " -> ".join((*chain[chain.index(name) :], name))
                raise GuestBuildError(f"module dependency cycle: {cycle}")
            mod = cache.get(name)
            if mod is None:
                mod = self._load(name, chain)
                cache[name] = mod
            for dep in mod.info.depends:
                visit(dep, (*chain, name))
            done.add(name)
            order.append(mod)

        for name in wanted:
            visit(normalize(name), ())
        return order

    def _load(self, name: str, chain: tuple[str, ...]) -> ResolvedModule:
        path = self.files.get(name)
        if path is None:
            needed = f" (needed by {chain[-1]})" if chain else ""
            raise GuestBuildError(
                f"module {name}{needed} not found in {self.moddir} and not listed in "
                "modules.builtin"
            )
        info, elf = read_module(path)
        if info.name != name:
            raise GuestBuildError(f"{path}: .modinfo name={info.name} does not match the file name")
        check_module(info, str(path), self.release, self.target)
        return ResolvedModule(info, path, elf)
