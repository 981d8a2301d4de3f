"""QEMU command lines per machine, config validation, and the launcher's waiting logic.

(The process itself, with a real QEMU, is tested in test_process.py.)

None of this starts QEMU: the waiting logic runs against a stand-in process
(`sleep`) and a console file written by the test.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from pyctl.qemu.launcher import (
    GuestDied,
    GuestTimeout,
    LaunchError,
    QemuInstance,
    create_raw_disk,
)
from pyctl.qemu.machines import (
    ConfigError,
    GuestConfig,
    NvmeDisk,
    build_command,
    kernel_cmdline,
    qemu_build_dir,
)

K = Path("/img/vmlinux")
BUILD = Path("/qemu-build")


def argv(**kw: object) -> list[str]:
    cfg = GuestConfig(kernel=K, initrd=Path("/img/initrd"), **kw)  # type: ignore[arg-type]
    return build_command(cfg, BUILD, Path("/w/console.log"))


def opt(args: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_common_arguments() -> None:
    a = argv(machine="pseries")
    assert a[0] == "/qemu-build/qemu-system-ppc64"
    for flag in ("-nodefaults", "-no-user-config"):
        assert flag in a
    assert "file,id=console0,path=/w/console.log" in opt(a, "-chardev")
    assert opt(a, "-serial") == ["chardev:console0"]
    # the monitors are the process's (socket pair, listening socket): not here
    assert opt(a, "-mon") == [] and "-qmp" not in a
    # a reset reboots unless asked otherwise
    assert "-no-reboot" not in a
    assert "-no-reboot" in argv(machine="pseries", no_reboot=True)
    assert opt(a, "-kernel") == ["/img/vmlinux"] and opt(a, "-initrd") == ["/img/initrd"]
    assert opt(a, "-m") == ["1024M"]
    assert "-S" not in a


def test_pseries_ddw_and_firmware() -> None:
    a = argv(machine="pseries")
    (m,) = opt(a, "-machine")
    assert m.startswith("pseries,") and "x-vof=on" in m and "cap-cfpc=broken" in m
    assert "spapr-pci-host-bridge.ddw=off" not in opt(a, "-global")
    off = argv(machine="pseries", ddw=False, pseries_firmware="slof")
    assert opt(off, "-global") == ["spapr-pci-host-bridge.ddw=off"]
    assert "x-vof=on" not in opt(off, "-machine")[0]
    assert kernel_cmdline(GuestConfig("pseries", K)).startswith("console=hvc0 ")


@pytest.mark.parametrize("machine", ["powernv9", "powernv10"])
def test_powernv_nvme_sits_on_the_phb_root_port(machine: str) -> None:
    a = argv(machine=machine, nvme=NvmeDisk(Path("/d/n.raw")))
    assert opt(a, "-machine") == [machine]
    devs = opt(a, "-device")
    assert "pnv-phb,chip-id=0,index=0,id=pcie.0" in devs
    assert "pnv-phb-root-port,id=rp0,bus=pcie.0" in devs
    assert "nvme,id=nvme0,drive=nvme0-drive,serial=iommulab-nvme0,bus=rp0" in devs
    assert "file=/d/n.raw,if=none,id=nvme0-drive,format=raw" in opt(a, "-drive")
    assert any(d.startswith("ipmi-bmc-sim") for d in devs), "power-off goes through the BMC"


def test_q35() -> None:
    a = argv(machine="q35", nvme=NvmeDisk(Path("/d/n.raw"), serial="s1", id="disk1"))
    assert a[0] == "/qemu-build/qemu-system-x86_64"
    assert opt(a, "-machine") == ["q35"]
    assert opt(a, "-device") == ["nvme,id=disk1,drive=disk1-drive,serial=s1"]
    assert kernel_cmdline(GuestConfig("q35", K, append="x=1")) == "console=ttyS0 panic=0 x=1"
    # with -no-reboot a panic reboots, i.e. ends QEMU
    assert kernel_cmdline(GuestConfig("q35", K, no_reboot=True)) == "console=ttyS0 panic=-1"


def test_paused_extra_args_and_comma_escaping() -> None:
    a = build_command(
        GuestConfig("q35", K, paused=True, extra_args=("-device", "edu")),
        BUILD,
        Path("/w,x/console.log"),
    )
    assert "-S" in a and a[-2:] == ["-device", "edu"]
    assert "file,id=console0,path=/w,,x/console.log" in opt(a, "-chardev")


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"machine": "virt"}, "unknown machine 'virt'"),
        ({"machine": "q35", "ddw": False}, "pseries only"),
        ({"machine": "pseries", "memory_mib": 64}, "memory"),
        ({"machine": "pseries", "smp": 0}, "smp"),
        ({"machine": "pseries", "pseries_firmware": "uefi"}, "firmware"),
        ({"machine": "pseries", "append": "a\nb"}, "one line"),
        ({"machine": "pseries", "memory_slots": 2}, "both memory_slots and max_memory_mib"),
        ({"machine": "pseries", "max_memory_mib": 4096}, "both memory_slots"),
        ({"machine": "pseries", "memory_slots": 2, "max_memory_mib": 512}, "must exceed"),
        ({"machine": "pseries", "memory_slots": 33, "max_memory_mib": 4096}, "0..32"),
    ],
)
def test_bad_configs_are_refused(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        GuestConfig(kernel=K, **kw)  # type: ignore[arg-type]


def test_bad_nvme_ids() -> None:
    with pytest.raises(ConfigError):
        NvmeDisk(Path("/x"), id="a,b")
    with pytest.raises(ConfigError):
        NvmeDisk(Path("/x"), serial="x" * 21)


def test_build_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IOMMULAB_QEMU_BUILD", str(tmp_path))
    assert qemu_build_dir() == tmp_path
    monkeypatch.delenv("IOMMULAB_QEMU_BUILD")
    monkeypatch.setenv("IOMMULAB_CACHE", "/c")
    assert qemu_build_dir() == Path("/c/qemu-build")


def test_raw_disk_is_sparse_and_sized(tmp_path: Path) -> None:
    disk = create_raw_disk(tmp_path / "d" / "n.raw", 256 << 20)
    assert disk.stat().st_size == 256 << 20
    assert disk.stat().st_blocks * 512 < 1 << 20
    with pytest.raises(ValueError):
        create_raw_disk(tmp_path / "x.raw", 1000)


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    inst = QemuInstance(GuestConfig("q35", K), tmp_path, build_dir=tmp_path / "nowhere")
    with pytest.raises(LaunchError, match=r"build QEMU with scripts/build-qemu\.sh"):
        inst.start()


def test_binary_that_cannot_be_executed_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("not executable")
    fake.chmod(0o644)
    inst = QemuInstance(GuestConfig("q35", K), tmp_path / "w", build_dir=tmp_path)
    with pytest.raises(LaunchError, match=r"cannot run .*Permission denied"):
        inst.start()


def test_qemu_that_exits_at_start_reports_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho 'qemu-system-x86_64: -device bogus: not found' >&2\nexit 1\n")
    fake.chmod(0o755)
    inst = QemuInstance(GuestConfig("q35", K), tmp_path / "w", build_dir=tmp_path)
    with pytest.raises(LaunchError, match=r"status 1.*-device bogus: not found"):
        inst.start()


def stand_in(tmp_path: Path, seconds: int = 30) -> QemuInstance:
    """An instance whose 'QEMU' is a sleep, so wait_for can be driven by writing the console."""
    inst = QemuInstance(GuestConfig("q35", K), tmp_path)
    inst.console_path.write_text("")
    inst.proc = subprocess.Popen(["sleep", str(seconds)])
    return inst


def write_later(path: Path, text: str, delay: float = 0.2) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        with path.open("a") as f:
            f.write(text)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_wait_for_sees_a_pattern_written_later(tmp_path: Path) -> None:
    inst = stand_in(tmp_path)
    try:
        t = write_later(inst.console_path, "booting\nIOMMULAB-DONE {}\n")
        m = inst.wait_for(r"IOMMULAB-DONE \{.*\}", timeout=20)
        t.join()
        assert m.group(0) == "IOMMULAB-DONE {}"
    finally:
        inst.kill()


def test_wait_for_times_out_with_the_console_log_named(tmp_path: Path) -> None:
    inst = stand_in(tmp_path)
    try:
        inst.console_path.write_text("stuck in firmware\n")
        with pytest.raises(GuestTimeout, match=r"within 0\.3s") as exc:
            inst.wait_for("never", timeout=0.3)
        assert exc.value.console == inst.console_path
        assert "console log:" in str(exc.value)
    finally:
        inst.kill()


def test_panic_ends_the_wait_early(tmp_path: Path) -> None:
    inst = stand_in(tmp_path)
    try:
        write_later(inst.console_path, "Kernel panic - not syncing: VFS\n").join()
        with pytest.raises(GuestDied, match="Kernel panic"):
            inst.wait_for("IOMMULAB-DONE", timeout=60)
    finally:
        inst.kill()


def test_qemu_exit_ends_the_wait_early(tmp_path: Path) -> None:
    inst = stand_in(tmp_path, seconds=0)
    inst.console_path.write_text("half a boot\n")
    with pytest.raises(GuestDied, match="QEMU exited"):
        inst.wait_for("IOMMULAB-DONE", timeout=60)


def test_long_workdir_gets_a_short_qmp_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    inst = QemuInstance(GuestConfig("q35", K), deep)
    assert len(str(inst.qmp_path)) < 108
    assert inst.console_path.parent == deep
    assert inst.monitor_path == inst.qmp_path


def test_memory_hotplug_slots() -> None:
    a = argv(machine="pseries", memory_slots=2, max_memory_mib=2048)
    assert opt(a, "-m") == ["1024M,slots=2,maxmem=2048M"]


@pytest.mark.parametrize(
    ("machine", "device", "guest_dev"),
    [
        ("pseries", ["-device", "spapr-vty,chardev=host0"], "/dev/hvc1"),
        ("q35", ["-serial", "chardev:host0"], "/dev/ttyS1"),
        ("powernv9", ["-serial", "chardev:console0"], "/dev/hvc0"),
        ("powernv10", ["-serial", "chardev:console0"], "/dev/hvc0"),
    ],
)
def test_host_channel(machine: str, device: list[str], guest_dev: str) -> None:
    cfg = GuestConfig(machine, K, host_channel=True)
    a = build_command(cfg, BUILD, Path("/w/c.log"), Path("/w/h.sock"))
    assert "socket,id=host0,path=/w/h.sock,server=on,wait=off" in opt(a, "-chardev")
    i = a.index(device[1])
    assert a[i - 1 : i + 1] == device
    assert f"iommulab.host={guest_dev}" in kernel_cmdline(cfg).split()
    with pytest.raises(ConfigError, match="give its socket path"):
        build_command(cfg, BUILD, Path("/w/c.log"))
    assert "iommulab.host" not in kernel_cmdline(GuestConfig(machine, K))


def test_powernv_host_channel_is_the_console_through_a_hub() -> None:
    # PowerNV's lab kernel drives only OPAL's console: the console's chardev
    # is a hub of the log file and the host socket, and there is one UART.
    cfg = GuestConfig("powernv9", K, host_channel=True)
    a = build_command(cfg, BUILD, Path("/w/c.log"), Path("/w/h.sock"))
    assert opt(a, "-chardev") == [
        "file,id=consolelog0,path=/w/c.log",
        "socket,id=host0,path=/w/h.sock,server=on,wait=off",
        "hub,id=console0,chardevs.0=consolelog0,chardevs.1=host0",
    ]
    assert opt(a, "-serial") == ["chardev:console0"]
    assert opt(argv(machine="powernv9"), "-chardev") == ["file,id=console0,path=/w/console.log"]


def test_tell_guest_writes_a_line_on_the_host_socket(tmp_path: Path) -> None:
    import socket

    inst = QemuInstance(GuestConfig("q35", K, host_channel=True), tmp_path)
    with pytest.raises(LaunchError, match="cannot connect to the host channel"):
        inst.tell_guest("go")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(inst.host_path))
    srv.listen(1)
    try:
        inst.tell_guest("go")
        inst.tell_guest("again")
        conn, _ = srv.accept()
        conn.settimeout(5)
        got = b""
        while got.count(b"\n") < 2:
            got += conn.recv(100)
        assert got == b"go\nagain\n"
        conn.close()
        with pytest.raises(ValueError, match="one line"):
            inst.tell_guest("a\nb")
    finally:
        inst.shutdown()
        srv.close()
    with pytest.raises(LaunchError, match="no host channel"):
        QemuInstance(GuestConfig("q35", K), tmp_path).tell_guest()
