"""The lab kernel flavour: guest kernels built by scripts/build-kernel.sh.

Debian's kernels have no ``CONFIG_IOMMUFD``; the lab builds its own from
the upstream tarball in Debian's ``linux`` source package
(``LINUX_ORIG_VERSION``, without Debian's patches) with the small
config fragments of ``guest/kernel/``, everything built in, plus the kernel's
iommufd selftests built static from the same tree.  The build script owns
the cache directory and decides whether it is up to date; this module asks it
(a no-op when the stamp matches) and reads the result.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pyctl.guest import GuestBuildError
from pyctl.guest.arches import GuestArch
from pyctl.guest.debs import REPO

BUILD_SCRIPT = REPO / "scripts" / "build-kernel.sh"
#: the selftest programs the build puts in ``selftests/`` (tools/testing/selftests/iommu)
SELFTESTS = ("iommufd", "iommufd_fail_nth")
#: the kernel image QEMU boots, by architecture (bzImage on x86, the ELF vmlinux on POWER)
IMAGE_FILE = {"x86_64": "bzImage", "ppc64le": "vmlinux"}


@dataclass(frozen=True)
class LabKernel:
    arch: str
    directory: Path  # <cache>/kernel/<arch>-<version>/
    release: str  # uname -r, e.g. 6.19.11-iommulab
    stamp: str  # the build's key: source version and the hash of its inputs

    @property
    def image(self) -> Path:
        return self.directory / IMAGE_FILE[self.arch]

    @property
    def config(self) -> Path:
        return self.directory / "config"

    def selftest(self, name: str) -> Path:
        return self.directory / "selftests" / name

    def digest(self) -> str:
        """SHA-256 over the kernel image and the selftest binaries (an image key input)."""
        h = hashlib.sha256()
        for path in (self.image, *(self.selftest(n) for n in SELFTESTS)):
            h.update(path.name.encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()


def kernel_dir(arch: str, versions: dict[str, str], cache: Path) -> Path:
    try:
        version = versions["LINUX_ORIG_VERSION"]
    except KeyError:
        raise GuestBuildError("scripts/versions.env lacks LINUX_ORIG_VERSION") from None
    return cache / "kernel" / f"{arch}-{version}"


def read_lab_kernel(directory: Path, arch: str) -> LabKernel:
    """The built kernel in ``directory``; GuestBuildError naming what is missing."""
    if arch not in IMAGE_FILE:
        raise GuestBuildError(f"no lab kernel for architecture {arch!r}")
    stamp = directory / "built"
    if not stamp.is_file():
        raise GuestBuildError(
            f"{directory}: no lab kernel built there (run scripts/build-kernel.sh {arch})"
        )
    kernel = LabKernel(
        arch,
        directory,
        (directory / "release").read_text().strip(),
        stamp.read_text().splitlines()[0],
    )
    for path in (kernel.image, kernel.config, *(kernel.selftest(n) for n in SELFTESTS)):
        if not path.is_file():
            raise GuestBuildError(f"{path}: missing from the lab kernel build {directory}")
    return kernel


def lab_kernel(
    arch: GuestArch,
    versions: dict[str, str],
    cache: Path,
    log: bool = False,
    script: Path = BUILD_SCRIPT,
) -> LabKernel:
    """The lab kernel of ``arch``, built first if it is missing or out of date.

    A build from scratch takes minutes (scripts/build-kernel.sh prints its
    progress on stderr); an up-to-date one costs a shell start.  The script
    takes its cache from IOMMULAB_CACHE, so it is given ``cache``.
    """
    env = {**os.environ, "IOMMULAB_CACHE": str(cache)}
    proc = subprocess.run(
        ["bash", str(script), arch.name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if log else subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").splitlines()[-15:])
        raise GuestBuildError(f"{script.name} {arch.name} failed:\n{tail}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise GuestBuildError(f"{script.name} {arch.name} printed no kernel directory")
    built = Path(lines[-1])
    expected = kernel_dir(arch.name, versions, cache)
    if built != expected:
        raise GuestBuildError(f"{script.name} built {built}, expected {expected}")
    if log:
        print(f">> guest {arch.name}: lab kernel {built}", file=sys.stderr, flush=True)
    return read_lab_kernel(built, arch.name)
