"""QEMU command lines for the machines the lab boots: pseries, powernv9/10, q35.

Only builds argument lists (no process is started here), so it is unit-tested
without QEMU.  Every machine runs with ``-nodefaults``: what it has is on the
command line: the serial console (to a file), the NVMe disk and whatever the
caller adds.  The QMP monitors are the process's (pyctl.qemu.process).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A machine configuration that cannot be turned into a command line."""


@dataclass(frozen=True)
class Machine:
    name: str
    arch: str  # guest architecture: ppc64le | x86_64
    binary: str
    console: str  # the kernel's console device


MACHINES: dict[str, Machine] = {
    "pseries": Machine("pseries", "ppc64le", "qemu-system-ppc64", "hvc0"),
    "powernv9": Machine("powernv9", "ppc64le", "qemu-system-ppc64", "hvc0"),
    "powernv10": Machine("powernv10", "ppc64le", "qemu-system-ppc64", "hvc0"),
    "q35": Machine("q35", "x86_64", "qemu-system-x86_64", "ttyS0"),
}

PSERIES_FIRMWARES = ("slof", "vof")
# TCG cannot provide the Spectre/Meltdown mitigations the default caps ask for.
PSERIES_TCG_CAPS = "cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off"
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def get_machine(name: str) -> Machine:
    try:
        return MACHINES[name]
    except KeyError:
        raise ConfigError(f"unknown machine {name!r} (known: {', '.join(MACHINES)})") from None


def qemu_build_dir() -> Path:
    """Where the built QEMU is: $IOMMULAB_QEMU_BUILD, else the cache's qemu-build."""
    env = os.environ.get("IOMMULAB_QEMU_BUILD")
    if env:
        return Path(env)
    cache = os.environ.get("IOMMULAB_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iommulab"
    )
    return Path(cache) / "qemu-build"


def _opt_value(value: str) -> str:
    """Escape a value for QEMU's key=value option syntax (a comma is doubled)."""
    return value.replace(",", ",,")


@dataclass(frozen=True)
class NvmeDisk:
    """An NVMe controller with one namespace backed by a raw file."""

    path: Path
    serial: str = "iommulab-nvme0"
    id: str = "nvme0"

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ConfigError(f"NVMe id {self.id!r}: letters, digits, _ . - only")
        if not self.serial or len(self.serial) > 20 or "," in self.serial:
            raise ConfigError(f"NVMe serial {self.serial!r}: 1-20 characters, no comma")


#: where the host channel appears in the guest, by machine
HOST_CHANNEL_DEVICE = {
    "pseries": "/dev/hvc1",
    "q35": "/dev/ttyS1",
    "powernv9": "/dev/hvc0",
    "powernv10": "/dev/hvc0",
}
#: machines whose host channel is the console itself.  PowerNV's only console
#: the lab kernel can drive is OPAL's (hvc_opal: skiboot serves one terminal,
#: the LPC UART); the kernel has no 8250 or virtio-console driver.  So the
#: console's chardev becomes a hub of the log file and the host socket: the
#: host reads the console's output too and must skip what is not its own.
HOST_CHANNEL_ON_CONSOLE = frozenset({"powernv9", "powernv10"})


@dataclass(frozen=True)
class GuestConfig:
    machine: str
    kernel: Path
    initrd: Path | None = None
    append: str = ""
    memory_mib: int = 1024
    smp: int = 1
    nvme: NvmeDisk | None = None
    ddw: bool = True  # pseries: dynamic DMA windows on the PHB
    pseries_firmware: str = "vof"
    paused: bool = False  # -S: stopped until QMP "cont"
    #: memory hotplug: DIMM slots and the most memory the guest may grow to
    #: (-m SIZE,slots=N,maxmem=MAX); 0 slots = no hotplug
    memory_slots: int = 0
    max_memory_mib: int = 0
    #: a console for the host to answer the agent's wait-host scenario
    #: (pseries: a second spapr-vty, hvc1; q35: a second UART, ttyS1;
    #: PowerNV: the console hvc0 itself, HOST_CHANNEL_ON_CONSOLE)
    host_channel: bool = False
    #: -no-reboot: a reset (the guest's or QMP system_reset) makes QEMU exit
    #: instead of rebooting the guest; a guest panic then ends QEMU too
    no_reboot: bool = False
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        machine = get_machine(self.machine)
        if not 256 <= self.memory_mib <= 65536:
            raise ConfigError(f"memory {self.memory_mib} MiB: must be 256..65536")
        if not 1 <= self.smp <= 16:
            raise ConfigError(f"smp {self.smp}: must be 1..16")
        if machine.name != "pseries" and not self.ddw:
            raise ConfigError(f"ddw=off applies to pseries only, not {machine.name}")
        if self.pseries_firmware not in PSERIES_FIRMWARES:
            raise ConfigError(
                f"pseries firmware {self.pseries_firmware!r}: one of {PSERIES_FIRMWARES}"
            )
        if "\n" in self.append:
            raise ConfigError("kernel command line must be one line")
        if not 0 <= self.memory_slots <= 32:
            raise ConfigError(f"memory slots {self.memory_slots}: must be 0..32")
        if bool(self.memory_slots) != bool(self.max_memory_mib):
            raise ConfigError("memory hotplug needs both memory_slots and max_memory_mib")
        if self.max_memory_mib and not self.memory_mib < self.max_memory_mib <= 1 << 20:
            raise ConfigError(
                f"max memory {self.max_memory_mib} MiB: must exceed memory "
                f"({self.memory_mib} MiB) and be at most 1 TiB"
            )
        if self.host_channel and machine.name not in HOST_CHANNEL_DEVICE:
            raise ConfigError(
                f"a host channel needs {' or '.join(HOST_CHANNEL_DEVICE)}, not {machine.name}"
            )

    @property
    def spec(self) -> Machine:
        return get_machine(self.machine)


def kernel_cmdline(cfg: GuestConfig) -> str:
    """The console for the machine, the panic policy, then the caller's.

    With -no-reboot a panicking guest reboots at once, so QEMU exits
    (``panic=-1``); a machine that may reboot keeps a panicked guest halted
    (``panic=0``) instead of booting it again: the panic stays the last thing
    on the console, where the launcher sees it.
    """
    parts = [f"console={cfg.spec.console}", "panic=-1" if cfg.no_reboot else "panic=0"]
    if cfg.host_channel:
        parts.append(f"iommulab.host={HOST_CHANNEL_DEVICE[cfg.spec.name]}")
    if cfg.append:
        parts.append(cfg.append)
    return " ".join(parts)


def _machine_args(cfg: GuestConfig) -> list[str]:
    name = cfg.spec.name
    if name == "pseries":
        opts = ["pseries", PSERIES_TCG_CAPS]
        if cfg.pseries_firmware == "vof":
            opts.append("x-vof=on")
        args = ["-machine", ",".join(opts)]
        if not cfg.ddw:
            args += ["-global", "spapr-pci-host-bridge.ddw=off"]
        return args
    if name in ("powernv9", "powernv10"):
        # -nodefaults drops the default PHBs, root ports and BMC: add one PHB
        # with a root port for the NVMe, and the BMC (OPAL power-off goes
        # through IPMI).
        return [
            "-machine",
            name,
            "-device",
            "pnv-phb,chip-id=0,index=0,id=pcie.0",
            "-device",
            "pnv-phb-root-port,id=rp0,bus=pcie.0",
            "-device",
            "ipmi-bmc-sim,id=bmc0",
            "-device",
            "isa-ipmi-bt,bmc=bmc0,irq=10",
        ]
    if name == "q35":
        return ["-machine", "q35", "-cpu", "max"]
    raise ConfigError(f"no command line for machine {name}")  # pragma: no cover


def _nvme_bus(cfg: GuestConfig) -> str | None:
    if cfg.spec.name.startswith("powernv"):
        return "rp0"
    return None


def _console_args(cfg: GuestConfig, console_log: Path, host_socket: Path | None) -> list[str]:
    """The console chardev (a file) and the host channel's socket, if any.

    On a machine whose host channel is the console, ``console0`` is a hub:
    the guest's output goes to the file and, while connected, to the socket;
    the socket's input goes to the guest.
    """
    log = f"file,id=console0,path={_opt_value(str(console_log))}"
    if not cfg.host_channel:
        return ["-chardev", log, "-serial", "chardev:console0"]
    if host_socket is None:
        raise ConfigError("this configuration has a host channel: give its socket path")
    sock = f"socket,id=host0,path={_opt_value(str(host_socket))},server=on,wait=off"
    if cfg.spec.name not in HOST_CHANNEL_ON_CONSOLE:
        return ["-chardev", log, "-serial", "chardev:console0", "-chardev", sock]
    return [
        "-chardev",
        log.replace("id=console0", "id=consolelog0", 1),
        "-chardev",
        sock,
        "-chardev",
        "hub,id=console0,chardevs.0=consolelog0,chardevs.1=host0",
        "-serial",
        "chardev:console0",
    ]


def build_command(
    cfg: GuestConfig,
    build_dir: Path,
    console_log: Path,
    host_socket: Path | None = None,
) -> list[str]:
    """QEMU's argv for ``cfg`` but the QMP monitors (``host_socket``: the host channel's,
    if it has one)."""
    binary = build_dir / cfg.spec.binary
    memory = f"{cfg.memory_mib}M"
    if cfg.memory_slots:
        memory += f",slots={cfg.memory_slots},maxmem={cfg.max_memory_mib}M"
    args = [
        str(binary),
        *_machine_args(cfg),
        "-accel",
        "tcg",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        *(["-no-reboot"] if cfg.no_reboot else []),
        "-m",
        memory,
        "-smp",
        str(cfg.smp),
        *_console_args(cfg, console_log, host_socket),
        "-kernel",
        str(cfg.kernel),
        "-append",
        kernel_cmdline(cfg),
    ]
    if cfg.initrd is not None:
        args += ["-initrd", str(cfg.initrd)]
    if cfg.host_channel and cfg.spec.name not in HOST_CHANNEL_ON_CONSOLE:
        if cfg.spec.name == "pseries":
            args += ["-device", "spapr-vty,chardev=host0"]
        else:
            args += ["-serial", "chardev:host0"]
    if cfg.nvme is not None:
        disk = cfg.nvme
        args += [
            "-drive",
            f"file={_opt_value(str(disk.path))},if=none,id={disk.id}-drive,format=raw",
        ]
        dev = f"nvme,id={disk.id},drive={disk.id}-drive,serial={disk.serial}"
        bus = _nvme_bus(cfg)
        if bus:
            dev += f",bus={bus}"
        args += ["-device", dev]
    if cfg.paused:
        args.append("-S")
    args += list(cfg.extra_args)
    return args
