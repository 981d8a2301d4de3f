"""Machines without a guest for the tests and benchmarks of the control plane.

``ViommuVm``: a paused q35 with the iommulab vIOMMU and edu devices behind it;
``PseriesVm``: a pseries under ``-accel qtest`` with edu on one or two PHBs.
Both are :class:`~pyctl.qemu.process.QemuProcess` es: ``vm.qmp`` is the
process's own QMP session, ``vm.qmp_path`` a second monitor for the client
under test (``QmpBackend(str(vm.qmp_path))``, ``iommulab --qmp``), ready when
``start()`` returns.  Importable as ``testvm`` (pytest's pythonpath has
tests/lib; scripts add it to sys.path).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import pytest

from pyctl.qemu.machines import qemu_build_dir
from pyctl.qemu.process import QemuProcess

VIOMMU = "iommulab-viommu"


def qemu_binary() -> Path | None:
    """The project's qemu-system-x86_64 if it is built, else None."""
    path = qemu_build_dir() / "qemu-system-x86_64"
    return path if path.is_file() else None


def ppc64_binary() -> Path | None:
    """The project's qemu-system-ppc64 if it is built, else None."""
    path = qemu_build_dir() / "qemu-system-ppc64"
    return path if path.is_file() else None


def has_viommu(binary: Path) -> bool:
    out = subprocess.run(
        [str(binary), "-device", "help"], capture_output=True, text=True, timeout=60, check=False
    )
    return f'"{VIOMMU}"' in out.stdout


_X86 = qemu_binary()
#: a test needs qemu-system-x86_64 built with iommulab-viommu
needs_viommu = pytest.mark.skipif(
    _X86 is None or not has_viommu(_X86), reason="QEMU with iommulab-viommu not built"
)
#: a test needs qemu-system-ppc64
needs_ppc64 = pytest.mark.skipif(ppc64_binary() is None, reason="qemu-system-ppc64 not built")


class _TestVm(QemuProcess):
    """start() returns the VM; stop() is shutdown()."""

    def __init__(self, argv: list[str], prefix: str, qtest: bool = False) -> None:
        super().__init__(argv, qtest=qtest, prefix=prefix)
        self.qmp_path = self.workdir / "qmp.sock"
        self.monitor_path = self.qmp_path

    def start(self, timeout: float = 30.0) -> Self:
        return super().start(timeout)

    def stop(self) -> None:
        self.shutdown()


class ViommuVm(_TestVm):
    """``with ViommuVm(devices=2) as vm: QmpBackend(str(vm.qmp_path))``; edu devices
    ``edu0``...; ``mem_opts`` adds -m options, e.g. "slots=2,maxmem=2G" for hotplug."""

    def __init__(
        self,
        devices: int = 2,
        mem_mib: int = 256,
        binary: Path | None = None,
        mem_opts: str = "",
    ) -> None:
        found = binary or qemu_binary()
        if found is None:
            raise FileNotFoundError(f"no qemu-system-x86_64 in {qemu_build_dir()}")
        self.devices = [f"edu{i}" for i in range(devices)]
        self.mem_mib = mem_mib
        self.mem_opts = mem_opts
        argv = [
            str(found),
            "-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
            "-m", f"{mem_mib}M" + (f",{mem_opts}" if mem_opts else ""),
            "-device", f"{VIOMMU},id=viommu0",
        ]  # fmt: skip
        for name in self.devices:
            argv += ["-device", f"edu,id={name}"]
        super().__init__(argv, "iommulab-vm-")


class PseriesVm(_TestVm):
    """A pseries under ``-accel qtest`` (no guest; RTAS and hypercalls through ``vm.qt``)
    with ``edu0`` on PHB 0 and, with ``second_phb``, ``edu1`` on PHB 1 (``phb1``)."""

    def __init__(
        self, second_phb: bool = True, mem_mib: int = 512, devices: Sequence[str] = ()
    ) -> None:
        """``devices``: more ``-device`` arguments (e.g. an ``iommulab-spapr-s2``)."""
        found = ppc64_binary()
        if found is None:
            raise FileNotFoundError(f"no qemu-system-ppc64 in {qemu_build_dir()}")
        self.second_phb = second_phb
        self.mem_mib = mem_mib
        argv = [
            str(found), "-M", "pseries", "-accel", "qtest", "-nodefaults",
            "-display", "none", "-m", f"{mem_mib}M",
            "-device", "edu,id=edu0,addr=03.0,dma_mask=0xffffffffffffffff",
        ]  # fmt: skip
        if second_phb:
            argv += [
                "-device", "spapr-pci-host-bridge,index=1,id=phb1",
                "-device", "edu,id=edu1,bus=phb1.0,dma_mask=0xffffffffffffffff",
            ]  # fmt: skip
        argv += [a for d in devices for a in ("-device", d)]
        super().__init__(argv, "iommulab-ppc-", qtest=True)
