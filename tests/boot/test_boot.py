"""Boot tests: pseries (DDW on / off), powernv9, powernv10 and q35 guests with NVMe.

Each test boots the project's QEMU with the Debian guest image, runs the
agent's scenarios (nvme-probe, nvme-rw at 4 KiB and 64 MiB, dmesg-iommu) and
checks the results; the bytes the guest wrote are also checked in the disk
file on the host.  The console log, QEMU's output and its command line are
kept in the test's output directory (``data/qemu/``); the parsed results in
``data/results.json``.

Run:  .venv/bin/avocado run tests/boot/
      .venv/bin/avocado run -t machine:pseries tests/boot/
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from avocado import Test

from pyctl.guest.image import GuestImage, build_image, default_kernel
from pyctl.guest.results import (
    DONE_PATTERN,
    DdwWindow,
    DefaultWindow,
    Scenario,
    parse_results,
    wait_pattern,
)
from pyctl.guest.runner import AgentRun, guest_config, run_agent
from pyctl.qemu.launcher import QemuInstance, create_raw_disk
from pyctl.qemu.machines import MACHINES, NvmeDisk, qemu_build_dir

DISK_BYTES = 512 << 20
SERIAL = "iommulab-boot"
# Bounded wait for the agent's DONE line: a hung guest fails within this.
BOOT_TIMEOUT = float(os.environ.get("IOMMULAB_BOOT_TIMEOUT", "240"))
DEFAULT_SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": "4K"}),
    Scenario("nvme-rw", {"size": "64M"}),
    Scenario("dmesg-iommu"),
]


def sha256_prefix(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


class GuestBoot(Test):
    """Shared steps; the subclasses are the tests.

    :avocado: disable
    """

    timeout = BOOT_TIMEOUT + 120

    def boot(
        self,
        machine: str,
        scenarios: list[Scenario] | None = None,
        check_known: bool = True,
        append: str = "",
        timeout: float = BOOT_TIMEOUT,
        **kwargs: Any,
    ) -> tuple[AgentRun, Path]:
        build = qemu_build_dir()
        binary = build / MACHINES[machine].binary
        if not binary.exists():
            self.error(f"{binary} missing: run scripts/build-qemu.sh (or set IOMMULAB_QEMU_BUILD)")
        image: GuestImage = build_image(MACHINES[machine].arch)
        disk = create_raw_disk(Path(self.workdir) / "nvme.raw", DISK_BYTES)
        cfg = guest_config(
            machine,
            image,
            scenarios or DEFAULT_SCENARIOS,
            NvmeDisk(disk, serial=SERIAL),
            check_known=check_known,
            append=append,
            **kwargs,
        )
        run = run_agent(cfg, Path(self.outputdir) / "qemu", timeout=timeout, build_dir=build)
        summary = {
            "machine": machine,
            "seconds_to_done": run.seconds_to_done,
            "error": run.error,
            "exit_status": run.exit_status,
            "results": run.results,
        }
        (Path(self.outputdir) / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.log.info("console log: %s", run.console)
        self.log.info("boot to DONE: %s s", run.seconds_to_done)
        return run, disk

    def check_run(self, run: AgentRun) -> None:
        if run.error is not None:
            self.fail(f"guest run failed: {run.error}")
        if run.done is None:
            self.fail(f"agent printed no DONE line (console log: {run.console})")
        failed = [r for r in run.results if r.get("ok") is not True]
        if failed:
            self.fail(f"scenarios failed: {json.dumps(failed)} (console log: {run.console})")
        boot = run.result("boot")
        if default_kernel() == "debian":  # the lab kernel has every driver built in
            self.assertEqual(boot["modules"][-1].rsplit("/", 1)[-1], "nvme")
        else:
            self.assertEqual(boot["modules"], [])

    def check_nvme(self, run: AgentRun, disk: Path) -> None:
        probe = run.result("nvme-probe")
        (ctrl,) = probe["controllers"]
        self.assertEqual(ctrl["serial"], SERIAL)
        self.assertEqual(ctrl["state"], "live")
        (ns,) = ctrl["namespaces"]
        self.assertEqual(ns["size_bytes"], DISK_BYTES)
        rws = [r for r in run.results if r["scenario"] == "nvme-rw"]
        self.assertEqual([r["size"] for r in rws], [4096, 64 << 20])
        for r in rws:
            self.assertEqual(r["sha256_read"], r["sha256_written"])
            self.log.info(
                "nvme-rw %d bytes: write %s MiB/s, read %s MiB/s",
                r["size"],
                r["write_mibs"],
                r["read_mibs"],
            )
        # The last pattern must be in the backing file: the guest's DMA reached the disk.
        last = rws[-1]
        self.assertEqual(sha256_prefix(disk, last["size"]), last["sha256_written"])

    def dmesg(self, run: AgentRun) -> dict[str, Any]:
        return run.result("dmesg-iommu")


class Pseries(GuestBoot):
    """pseries: sPAPR TCE + DDW on the default PHB.

    :avocado: tags=arch:ppc64le,machine:pseries
    """

    def test_ddw_on(self) -> None:
        """The guest creates its 64-bit window (1<<59, direct-mapped) and DMA works.

        :avocado: tags=ddw:on
        """
        run, disk = self.boot("pseries")
        self.check_run(run)
        self.check_nvme(run, disk)
        info = self.dmesg(run)
        windows = [DdwWindow.from_hex(w["path"], w["hex"]) for w in info["dt_windows"]]
        self.assertEqual(len(windows), 1, f"expected one DDW, got {windows}")
        (w,) = windows
        self.assertEqual(w.dma_base, 1 << 59)
        self.assertTrue(w.direct, "the guest direct-maps RAM through the DDW")
        self.assertGreaterEqual(w.size, 1 << 30, "window covers the 1 GiB of guest RAM")
        self.assertTrue(
            any("ibm,create-pe-dma-window" in ln and "returned 0" in ln for ln in info["lines"]),
            "kernel log shows the create-pe-dma-window RTAS call succeeding",
        )

    def test_ddw_off(self) -> None:
        """With ddw=off on the PHB only the default 1 GiB 32-bit window exists.

        :avocado: tags=ddw:off
        """
        run, disk = self.boot("pseries", ddw=False)
        self.check_run(run)
        self.check_nvme(run, disk)
        info = self.dmesg(run)
        self.assertEqual(info["dt_windows"], [], "no DDW property with ddw=off")
        self.assertFalse(any("create-pe-dma-window" in ln for ln in info["lines"]))
        self.assertFalse(any("query-pe-dma-windows" in ln for ln in info["lines"]))
        (dw,) = [DefaultWindow.from_hex(w["path"], w["hex"]) for w in info["dt_default_windows"]]
        self.assertEqual((dw.offset, dw.size), (0, 1 << 30))

    def test_nvme_rw_256m(self) -> None:
        """The largest pattern, 256 MiB, through the DDW.

        :avocado: tags=size:256M
        """
        run, disk = self.boot("pseries", [Scenario("nvme-rw", {"size": "256M"})], memory_mib=2048)
        self.check_run(run)
        (rw,) = [r for r in run.results if r["scenario"] == "nvme-rw"]
        self.assertEqual(rw["size"], 256 << 20)
        self.assertEqual(sha256_prefix(disk, rw["size"]), rw["sha256_written"])


class PowerNV(GuestBoot):
    """PowerNV: NVMe on a PHB root port; 32-bit TCE window plus 64-bit bypass.

    :avocado: tags=arch:ppc64le
    """

    def _powernv(self, machine: str) -> None:
        run, disk = self.boot(machine)
        self.check_run(run)
        self.check_nvme(run, disk)
        (ctrl,) = run.result("nvme-probe")["controllers"]
        self.assertEqual(ctrl["pci"], "0000:01:00.0", "NVMe behind the root port (bus 1)")
        lines = self.dmesg(run)["lines"]
        self.assertTrue(any("Setting up 32-bit TCE table" in ln for ln in lines))
        self.assertTrue(any("64-bit DMA bypass" in ln for ln in lines))

    def test_powernv9(self) -> None:
        """:avocado: tags=machine:powernv9"""
        self._powernv("powernv9")

    def test_powernv10(self) -> None:
        """:avocado: tags=machine:powernv10"""
        self._powernv("powernv10")


class Q35(GuestBoot):
    """q35 without a vIOMMU: DMA goes straight to guest memory.

    :avocado: tags=arch:x86_64,machine:q35
    """

    def test_q35(self) -> None:
        run, disk = self.boot("q35")
        self.check_run(run)
        self.check_nvme(run, disk)
        self.assertEqual(self.dmesg(run)["dt_windows"], [])

    def test_nvme_rw_256m(self) -> None:
        """:avocado: tags=size:256M"""
        run, disk = self.boot("q35", [Scenario("nvme-rw", {"size": "256M"})], memory_mib=2048)
        self.check_run(run)
        (rw,) = [r for r in run.results if r["scenario"] == "nvme-rw"]
        self.assertEqual(sha256_prefix(disk, rw["size"]), rw["sha256_written"])

    def test_paused_start(self) -> None:
        """-S: the guest does not run until QMP cont (later work attaches the vIOMMU first).

        :avocado: tags=paused
        """
        image = build_image("x86_64")
        disk = create_raw_disk(Path(self.workdir) / "nvme.raw", DISK_BYTES)
        cfg = guest_config(
            "q35", image, [Scenario("nvme-probe")], NvmeDisk(disk, serial=SERIAL), paused=True
        )
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu")
        inst.start()
        try:
            self.assertEqual(inst.qmp.cmd("query-status")["status"], "prelaunch")
            self.assertEqual(inst.console_text(), "", "nothing ran before cont")
            inst.qmp.cmd("cont")
            self.assertTrue(inst.qmp.cmd("query-status")["running"])
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT)
        finally:
            inst.shutdown()
        (probe,) = [r for r in parse_results(inst.console_text()) if r["scenario"] == "nvme-probe"]
        self.assertIs(probe["ok"], True)
        self.assertEqual(probe["controllers"][0]["serial"], SERIAL)

    def test_host_channel(self) -> None:
        """wait-host: the agent blocks until the host answers on ttyS1; a silent host times out.

        :avocado: tags=host-channel
        """
        image = build_image("x86_64")
        scenarios = [
            Scenario("wait-host", {"name": "first"}),
            Scenario("wait-host", {"name": "silent", "timeout": "2"}),
            Scenario("wait-host", {"name": "second"}),
        ]
        cfg = guest_config("q35", image, scenarios, None, host_channel=True)
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu")
        inst.start()
        try:
            at = inst.wait_for(wait_pattern("first"), BOOT_TIMEOUT).end()
            inst.tell_guest("hello from the host")
            at = inst.wait_for(wait_pattern("second"), BOOT_TIMEOUT, start=at).end()
            inst.tell_guest("bye")
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT, start=at)
        finally:
            inst.shutdown()
        first, silent, second = [
            r for r in parse_results(inst.console_text()) if r["scenario"] == "wait-host"
        ]
        self.assertEqual((first["ok"], first["said"]), (True, "hello from the host"))
        self.assertIs(silent["ok"], False)
        self.assertIn("no word from the host on /dev/ttyS1 within 2s", silent["error"])
        self.assertEqual((second["ok"], second["said"]), (True, "bye"))


class FailurePaths(GuestBoot):
    """Bad input and broken guests end in a clear failure, within a bounded time.

    :avocado: tags=arch:x86_64,machine:q35,failure-paths
    """

    def test_unknown_scenario(self) -> None:
        """The agent reports an unknown scenario as a failed result and still finishes."""
        run, _ = self.boot(
            "q35", [Scenario("nvme-probe"), Scenario("no-such-scenario")], check_known=False
        )
        self.assertIsNone(run.error)
        self.assertIsNotNone(run.done)
        bad = run.result("no-such-scenario")
        self.assertIs(bad["ok"], False)
        self.assertIn("unknown scenario 'no-such-scenario'", bad["error"])
        self.assertIs(run.result("nvme-probe")["ok"], True)
        self.assertFalse(run.ok)

    def test_wait_host_without_a_channel(self) -> None:
        """wait-host on a guest started without a host channel fails at once, clearly."""
        run, _ = self.boot("q35", [Scenario("wait-host")])
        self.assertIsNone(run.error)
        self.assertIn("no iommulab.host=", run.result("wait-host")["error"])

    def test_bad_scenario_argument(self) -> None:
        """An nvme-rw size that is not a multiple of 4 KiB is refused by the agent."""
        run, _ = self.boot("q35", [Scenario("nvme-rw", {"size": "3000"})])
        self.assertIsNone(run.error)
        rw = run.result("nvme-rw")
        self.assertIs(rw["ok"], False)
        self.assertIn("multiple of 4 KiB", rw["error"])

    def test_guest_that_never_reports_times_out(self) -> None:
        """A guest whose init never prints a result fails within the timeout, log kept."""
        # rdinit=/bin/sh: a shell on the console waits for input forever.
        run, _ = self.boot("q35", append="rdinit=/bin/sh", timeout=30)
        self.assertIsNotNone(run.error)
        self.assertIn("did not appear on the console within 30", run.error or "")
        self.assertEqual(run.results, [])
        self.assertTrue(run.console.exists() and run.console.stat().st_size > 0)
        self.assertIn("Linux version", run.console.read_text(errors="replace"))

    def test_kernel_panic_is_detected(self) -> None:
        """A guest that panics is reported as a failure quickly, with the panic in the log."""
        run, _ = self.boot("q35", append="rdinit=/no/such/init root=/dev/nowhere", timeout=120)
        self.assertIsNotNone(run.error)
        self.assertTrue(
            "Kernel panic" in (run.error or "") or "QEMU exited" in (run.error or ""),
            run.error,
        )
        self.assertIn("Kernel panic", run.console.read_text(errors="replace"))
