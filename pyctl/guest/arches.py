"""The two guest architectures: which Debian packages, kernel file and ELF target."""

from __future__ import annotations

from dataclasses import dataclass

from pyctl.guest import GuestBuildError
from pyctl.guest.debs import Package
from pyctl.guest.modules import ElfTarget


@dataclass(frozen=True)
class GuestArch:
    name: str  # ppc64le | x86_64
    deb_arch: str  # Debian architecture
    flavour: str  # Debian kernel flavour
    kernel_package_suffix: str  # appended to linux-image-<abi>-
    kernel_file: str  # path inside the package, {release} substituted
    elf_kernel: bool  # ELF vmlinux (checked as ELF) vs bzImage
    target: ElfTarget

    def release(self, abi: str) -> str:
        return f"{abi}-{self.flavour}"

    def packages(self, versions: dict[str, str]) -> tuple[Package, Package]:
        """(kernel, busybox) packages pinned by versions.env."""
        try:
            abi, linux, busybox = (
                versions["LINUX_ABI"],
                versions["LINUX_VERSION"],
                versions["BUSYBOX_VERSION"],
            )
        except KeyError as exc:
            raise GuestBuildError(f"scripts/versions.env lacks {exc.args[0]}") from exc
        kernel = Package(f"linux-image-{abi}-{self.kernel_package_suffix}", linux, self.deb_arch)
        return kernel, Package("busybox-static", busybox, self.deb_arch)


ARCHES: dict[str, GuestArch] = {
    "ppc64le": GuestArch(
        name="ppc64le",
        deb_arch="ppc64el",
        flavour="powerpc64le",
        kernel_package_suffix="powerpc64le",
        kernel_file="boot/vmlinux-{release}",
        elf_kernel=True,
        target=ElfTarget("EM_PPC64", little_endian=True),
    ),
    "x86_64": GuestArch(
        name="x86_64",
        deb_arch="amd64",
        flavour="amd64",
        # The unsigned package has the same kernel without the EFI signature.
        kernel_package_suffix="amd64-unsigned",
        kernel_file="boot/vmlinuz-{release}",
        elf_kernel=False,
        target=ElfTarget("EM_X86_64", little_endian=True),
    ),
}


def get_arch(name: str) -> GuestArch:
    try:
        return ARCHES[name]
    except KeyError:
        raise GuestBuildError(
            f"unknown guest architecture {name!r} (known: {', '.join(ARCHES)})"
        ) from None
