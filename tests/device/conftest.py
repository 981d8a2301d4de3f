"""Device-level tests of iommulab-viommu: real QEMU (q35, ``-accel qtest``),
the ``edu`` device behind the vIOMMU, QMP over a unix socket (qemu.qmp) and
qtest for guest memory, port I/O and the virtual clock.  No guest runs.

The QEMU binary is ``$IOMMULAB_QEMU`` or the project build in
``~/.cache/iommulab/qemu-build``.  Without it the tests are skipped, except in
CI (``CI=true``) where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyctl.qemu.qtest_machine import QtestMachine

EDU_DEVFN = 3 << 3  # 00:03.0
EDU_BAR = 0xFE000000
EDU_BUF = 0x40000  # edu's DMA buffer, in its own address space
EDU_BUF_SIZE = 4096
RAM = 256 << 20
IOMMU = "viommu0"


def qemu_binary(target: str = "x86_64") -> Path:
    """The project's qemu-system-TARGET (IOMMULAB_QEMU / IOMMULAB_QEMU_PPC64 override it);
    a skip when it is not built, a failure in CI."""
    env = os.environ.get("IOMMULAB_QEMU_PPC64" if target == "ppc64" else "IOMMULAB_QEMU")
    path = Path(env) if env else (Path.home() / f".cache/iommulab/qemu-build/qemu-system-{target}")
    if not path.is_file():
        msg = f"QEMU binary {path} not built (scripts/build-qemu.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


class Lab(QtestMachine):
    """One QEMU process with the vIOMMU and an edu device."""

    def __init__(self, extra: list[str] | None = None) -> None:
        super().__init__(
            qemu_binary(),
            [
                "-machine", "q35", "-m", str(RAM >> 20),
                "-device", f"iommulab-viommu,id={IOMMU}" + "".join(extra or []),
                "-device", "edu,id=edu0,addr=03.0,dma_mask=0xffffffffffffffff",
            ],
            prefix="iommulab-dev-",
        )  # fmt: skip
        self._pci_setup()

    # --- QMP ---
    def cmd(self, name: str, **args: Any) -> Any:
        """Run an x-iommulab command on viommu0 (dashes for underscores)."""
        args = {k.replace("_", "-"): v for k, v in args.items()}
        args.setdefault("iommu", IOMMU)
        return self.qmp.cmd(name, **args)

    def events(self, name: str) -> list[dict[str, Any]]:
        """Events received so far (QEMU sends them before the reply to any
        later command, so run a command first)."""
        return self.qmp.events(name)

    # --- edu ---
    def _cfg_addr(self, reg: int) -> int:
        return 0x80000000 | (EDU_DEVFN << 8) | reg

    def _pci_setup(self) -> None:
        self.qt.outl(0xCF8, self._cfg_addr(0))
        assert self.qt.inl(0xCFC) == 0x11E81234, "edu not at 00:03.0"
        self.qt.outl(0xCF8, self._cfg_addr(0x10))
        self.qt.outl(0xCFC, EDU_BAR)
        self.qt.outl(0xCF8, self._cfg_addr(0x04))
        self.qt.outl(0xCFC, 0x6)  # memory space + bus master
        assert self.qt.readl(EDU_BAR) == 0x010000ED

    def dma(self, src: int, dst: int, count: int, to_memory: bool) -> None:
        """Run one edu DMA; addresses are bus addresses (IOVAs) or edu's buffer."""
        self.qt.writeq(EDU_BAR + 0x80, src)
        self.qt.writeq(EDU_BAR + 0x88, dst)
        self.qt.writeq(EDU_BAR + 0x90, count)
        self.qt.writeq(EDU_BAR + 0x98, 1 | (2 if to_memory else 0))
        self.qt.clock_step(200_000_000)  # edu runs the DMA from a 100 ms timer
        assert self.qt.readq(EDU_BAR + 0x98) & 1 == 0, "edu DMA did not run"

    def dma_to_edu(self, iova: int, count: int = EDU_BUF_SIZE) -> None:
        """edu reads memory at iova into its buffer."""
        self.dma(iova, EDU_BUF, count, to_memory=False)

    def dma_from_edu(self, iova: int, count: int = EDU_BUF_SIZE) -> None:
        """edu writes its buffer to memory at iova."""
        self.dma(EDU_BUF, iova, count, to_memory=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab_factory() -> Iterator[Any]:
    labs: list[Lab] = []

    def make(extra: list[str]) -> Lab:
        labs.append(Lab(extra))
        return labs[-1]

    yield make
    for lab in labs:
        lab.close()
