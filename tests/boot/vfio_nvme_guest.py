"""Shared parts of the vfio-nvme boot tests (test_vfio_nvme.py): the driver in the
initramfs, the machines' NVMe placement, the pattern the driver writes.

Not a test module: avocado finds no Test class here.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from pyctl.guest import GuestBuildError, cpio
from pyctl.guest.debs import read_versions
from pyctl.guest.image import GuestImage, build_image, cache_root
from pyctl.guest.labkernel import kernel_dir, read_lab_kernel
from pyctl.guest.results import Scenario

REPO = Path(__file__).resolve().parents[2]
DISK_BYTES = 128 << 20
SERIAL = "vfio-nvme"
#: the container module each Debian kernel needs (the lab kernels have everything built in)
CONTAINER_MODULE = {"x86_64": "vfio_iommu_type1", "ppc64le": "vfio_iommu_spapr_tce"}


def build_driver(arch: str) -> Path:
    """guest/vfio-nvme built static for ``arch`` (cached; make rebuilds a changed source)."""
    out = subprocess.run(
        ["bash", str(REPO / "guest" / "vfio-nvme" / "build.sh"), arch],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"guest/vfio-nvme/build.sh {arch} failed: {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def debian_image(arch: str) -> GuestImage:
    """The Debian kernel's image with vfio-pci and the architecture's legacy container."""
    return build_image(arch, modules=("nvme", "vfio_pci", CONTAINER_MODULE[arch]))


RFC_DIR = REPO / "guest" / "kernel-patches" / "ppc64-iommufd-rfc"


def rfc_cache() -> Path:
    """The RFC flavour's cache root (its build script keeps it: guest/kernel-patches/
    ppc64-iommufd-rfc/build.sh)."""
    return cache_root() / "rfc"


def lab_image(arch: str, kernel: str) -> tuple[GuestImage | None, str]:
    """The ``lab`` or ``rfc`` image if its kernel is built, else (None, why).

    A boot test is bounded in time, so it never builds a kernel (minutes): that is
    scripts/build-kernel.sh's job (or the RFC's build.sh), run before.
    """
    if kernel == "rfc" and arch != "ppc64le":
        return None, "the RFC flavour is ppc64le only"
    cache = rfc_cache() if kernel == "rfc" else cache_root()
    script = RFC_DIR / "build.sh" if kernel == "rfc" else REPO / "scripts" / "build-kernel.sh"
    try:
        read_lab_kernel(kernel_dir(arch, read_versions(), cache), arch)
    except GuestBuildError:
        return None, f"the {kernel} kernel for {arch} is not built: run {script} {arch}"
    try:
        return build_image(arch, modules=(), cache=cache, kernel="lab", kernel_script=script), ""
    except GuestBuildError as exc:
        return None, f"the {kernel} image for {arch} could not be built: {exc}"


def with_driver(image: GuestImage, workdir: Path) -> Path:
    """An initrd: ``image``'s, then a second cpio member adding /bin/vfio-nvme (the kernel
    unpacks concatenated gzip'ed archives in order)."""
    arch = "x86_64" if image.arch == "x86_64" else "ppc64le"
    arc = cpio.Archive()
    arc.add(cpio.directory("bin"))
    arc.add(cpio.regular("bin/vfio-nvme", build_driver(arch).read_bytes(), 0o755))
    initrd = workdir / "initrd-vfio-nvme.gz"
    initrd.write_bytes(image.initrd.read_bytes() + gzip.compress(arc.to_bytes(), mtime=0))
    return initrd


def drive(disk: Path) -> list[str]:
    return ["-drive", f"file={disk},if=none,id=vn-drive,format=raw"]


def q35_intel_iommu(disk: Path) -> list[str]:
    """intel-iommu first (a vIOMMU translates only devices created after it), then the NVMe."""
    return [
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        *drive(disk), "-device", f"nvme,id=vn,drive=vn-drive,serial={SERIAL}",
    ]  # fmt: skip


def pseries_second_phb(disk: Path, ddw: bool) -> list[str]:
    """The RFC's set-up: the NVMe alone on a second PHB (index 1), DDW on or off."""
    return [
        "-device", f"spapr-pci-host-bridge,index=1,id=pci.1,ddw={'on' if ddw else 'off'}",
        *drive(disk), "-device", f"nvme,id=vn,drive=vn-drive,serial={SERIAL},bus=pci.1.0,addr=0x1",
    ]  # fmt: skip


def pseries_two_on_second_phb(disk: Path, disk2: Path) -> list[str]:
    """Two NVMe functions on PHB 1 (ddw=on): one PE, one IOMMU group."""
    return [*pseries_second_phb(disk, ddw=True), *second_nvme(disk2, "pci.1.0", "0x2")]


def second_nvme(disk2: Path, bus: str | None = None, addr: str | None = None) -> list[str]:
    """A second NVMe (serial ``SERIAL-2``) on ``disk2``, where the machine puts it or on
    ``bus`` at ``addr``."""
    place = f",bus={bus},addr={addr}" if bus else ""
    return [
        "-drive", f"file={disk2},if=none,id=vn2-drive,format=raw",
        "-device", f"nvme,id=vn2,drive=vn2-drive,serial={SERIAL}-2{place}",
    ]  # fmt: skip


def q35_intel_iommu_two(disk: Path, disk2: Path) -> list[str]:
    """Two NVMe behind intel-iommu (each its own IOMMU group)."""
    return [*q35_intel_iommu(disk), *second_nvme(disk2)]


def pseries_two_phbs(disk: Path, disk2: Path) -> list[str]:
    """An NVMe alone on PHB 1 and another alone on PHB 2: two PEs, two IOMMU groups."""
    return [
        *pseries_second_phb(disk, ddw=True),
        "-device", "spapr-pci-host-bridge,index=2,id=pci.2",
        *second_nvme(disk2, "pci.2.0", "0x1"),
    ]  # fmt: skip


def powernv_second_phb(disk2: Path) -> list[str]:
    """PowerNV: a second PHB (index 1) with a root port and an NVMe behind it (the machine's
    own NVMe is behind PHB 0's root port): two PEs, two IOMMU groups."""
    return [
        "-device", "pnv-phb,chip-id=0,index=1,id=pcie.1",
        "-device", "pnv-phb-root-port,id=rp1,bus=pcie.1",
        *second_nvme(disk2, "rp1", "0x0"),
    ]  # fmt: skip


def vfio(**args: Any) -> Scenario:
    """A ``vfio-nvme`` scenario (guest/agent/init) with these arguments."""
    return Scenario("vfio-nvme", {k.replace("_", "-"): str(v) for k, v in args.items()})


def pattern(seed: int, offset: int, size: int) -> bytes:
    """The driver's pattern at byte ``offset`` of the namespace: word o/8 is
    splitmix64(seed + o/8), little-endian (guest/vfio-nvme/main.c)."""
    with np.errstate(over="ignore"):
        x = np.arange(offset // 8, (offset + size) // 8, dtype=np.uint64) + np.uint64(seed)
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z.astype("<u8").tobytes()


def disk_mismatch(disk: Path, report: dict[str, Any]) -> str | None:
    """None if the disk file holds the driver's pattern where its report says it wrote it."""
    offset = int(report["lba"]) * int(report["lba_size"])
    size = int(report["size"])
    with disk.open("rb") as f:
        f.seek(offset)
        got = f.read(size)
    want = pattern(int(report["seed"]), offset, size)
    if got == want:
        return None
    first = next(i for i in range(len(want)) if i >= len(got) or got[i] != want[i])
    return f"disk bytes differ from the pattern at offset {offset + first} (of {offset}+{size})"
