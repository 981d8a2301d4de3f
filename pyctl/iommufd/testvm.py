"""A paused q35 QEMU with the iommulab vIOMMU and edu devices behind it, for the QMP
backend's tests and benchmark (no guest runs; the device is programmed over QMP)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self

from pyctl.qemu.machines import qemu_build_dir

VIOMMU = "iommulab-viommu"


def qemu_binary() -> Path | None:
    """The project's qemu-system-x86_64 if it is built, else None."""
    path = qemu_build_dir() / "qemu-system-x86_64"
    return path if path.is_file() else None


def has_viommu(binary: Path) -> bool:
    out = subprocess.run(
        [str(binary), "-device", "help"], capture_output=True, text=True, timeout=60, check=False
    )
    return f'"{VIOMMU}"' in out.stdout


class _SocketVm(ABC):
    """A QEMU process whose QMP (and other) unix sockets are ready after start()."""

    binary: Path
    _dir: Path
    qmp_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None

    @abstractmethod
    def argv(self) -> list[str]:
        """The machine's full command line."""

    def sockets(self) -> list[Path]:
        """The sockets start() waits for."""
        return [self.qmp_path]

    def start(self, timeout: float = 30.0) -> Self:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not all(p.exists() for p in self.sockets()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("QEMU's sockets did not appear")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ViommuVm(_SocketVm):
    """``with ViommuVm(devices=2) as vm: QmpBackend(vm.qmp_path)``; edu devices ``edu0``..."""

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
        self.binary = found
        self.devices = [f"edu{i}" for i in range(devices)]
        self.mem_mib = mem_mib
        #: more -m options, e.g. "slots=2,maxmem=2G" for memory hotplug
        self.mem_opts = mem_opts
        self._dir = Path(tempfile.mkdtemp(prefix="iommulab-vm-"))
        self.qmp_path = self._dir / "qmp.sock"
        self.log_path = self._dir / "qemu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [
            str(self.binary),
            "-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
            "-m", f"{self.mem_mib}M" + (f",{self.mem_opts}" if self.mem_opts else ""),
            "-device", f"{VIOMMU},id=viommu0",
        ]  # fmt: skip
        for name in self.devices:
            argv += ["-device", f"edu,id={name}"]
        argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        return argv


def ppc64_binary() -> Path | None:
    """The project's qemu-system-ppc64 if it is built, else None."""
    path = qemu_build_dir() / "qemu-system-ppc64"
    return path if path.is_file() else None


class PseriesVm(_SocketVm):
    """A pseries under ``-accel qtest`` (no guest; RTAS and hypercalls through ``qtest_path``)
    with ``edu0`` on PHB 0 and, with ``second_phb``, ``edu1`` on PHB 1 (``phb1``)."""

    def __init__(self, second_phb: bool = True, mem_mib: int = 512) -> None:
        found = ppc64_binary()
        if found is None:
            raise FileNotFoundError(f"no qemu-system-ppc64 in {qemu_build_dir()}")
        self.binary = found
        self.second_phb = second_phb
        self.mem_mib = mem_mib
        self._dir = Path(tempfile.mkdtemp(prefix="iommulab-ppc-"))
        self.qmp_path = self._dir / "qmp.sock"
        self.qtest_path = self._dir / "qtest.sock"
        self.log_path = self._dir / "qemu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def sockets(self) -> list[Path]:
        return [self.qmp_path, self.qtest_path]

    def argv(self) -> list[str]:
        argv = [
            str(self.binary), "-M", "pseries", "-accel", "qtest", "-nodefaults",
            "-display", "none", "-m", f"{self.mem_mib}M",
            "-device", "edu,id=edu0,addr=03.0,dma_mask=0xffffffffffffffff",
        ]  # fmt: skip
        if self.second_phb:
            argv += [
                "-device", "spapr-pci-host-bridge,index=1,id=phb1",
                "-device", "edu,id=edu1,bus=phb1.0,dma_mask=0xffffffffffffffff",
            ]  # fmt: skip
        argv += [
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-chardev", f"socket,id=qt,path={self.qtest_path},server=on,wait=off",
            "-qtest", "chardev:qt",
        ]  # fmt: skip
        return argv
