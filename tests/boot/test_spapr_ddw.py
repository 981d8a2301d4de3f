"""Boot tests of the sPAPR DDW policy: pseries guests whose DMA windows follow
what the host set over QMP before the guest ran.

QEMU starts paused (``-S``); the test sets the PHB's DDW policy with
``x-iommulab-spapr-set-ddw-policy``, continues, and waits for the agent's
DONE line.  The guest powers off into a paused VM (``-action
shutdown=pause``) so that the windows and the window events can be read over
QMP afterwards.  Each test checks that NVMe writes and reads back its
pattern (and that it reached the disk file), what the guest's device tree
says about its windows, and what QEMU's windows and events say.

Run:  .venv/bin/avocado run tests/boot/test_spapr_ddw.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from avocado import Test

from pyctl.guest.image import build_image
from pyctl.guest.results import (
    BOOT_PATTERN,
    DONE_PATTERN,
    DdwWindow,
    DefaultWindow,
    Scenario,
    cmdline_arg,
    parse_results,
)
from pyctl.qemu.launcher import LaunchError, QemuInstance, create_raw_disk
from pyctl.qemu.machines import GuestConfig, NvmeDisk, qemu_build_dir

DISK_BYTES = 256 << 20
SERIAL = "iommulab-spapr"
BOOT_TIMEOUT = float(os.environ.get("IOMMULAB_BOOT_TIMEOUT", "240"))
SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": "4K"}),
    Scenario("nvme-rw", {"size": "64M"}),
    Scenario("dmesg-iommu"),
]
GiB = 1 << 30
LIOBN0, LIOBN1 = 0x80000000, 0x80000001


class SpaprRun:
    """What one guest run left behind."""

    def __init__(
        self,
        results: list[dict[str, Any]],
        events: list[dict[str, Any]],
        phb: dict[str, Any],
        disk: Path,
        console: Path,
    ) -> None:
        self.results = results
        self.events = events
        self.phb = phb
        self.disk = disk
        self.console = console

    def result(self, scenario: str) -> dict[str, Any]:
        for r in self.results:
            if r.get("scenario") == scenario:
                return r
        raise KeyError(f"no {scenario} result (console: {self.console})")

    def window_events(self) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if e["event"] == "X_IOMMULAB_SPAPR_WINDOW"]

    def ddws(self) -> list[DdwWindow]:
        return [
            DdwWindow.from_hex(w["path"], w["hex"])
            for w in self.result("dmesg-iommu")["dt_windows"]
        ]

    def default_windows(self) -> list[DefaultWindow]:
        return [
            DefaultWindow.from_hex(w["path"], w["hex"])
            for w in self.result("dmesg-iommu")["dt_default_windows"]
        ]

    def kernel_lines(self) -> list[str]:
        lines: list[str] = self.result("dmesg-iommu")["lines"]
        return lines


def sha256_prefix(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(size))
    return h.hexdigest()


class SpaprDdwPolicy(Test):  # type: ignore[misc]
    """pseries guests under DDW policies set over QMP.

    :avocado: tags=arch:ppc64le,machine:pseries,spapr
    """

    timeout = BOOT_TIMEOUT + 120

    def run_guest(self, policy: dict[str, Any], memory_mib: int = 1024) -> SpaprRun:
        build = qemu_build_dir()
        image = build_image("ppc64le")
        workdir = Path(self.outputdir) / "qemu"
        disk = create_raw_disk(Path(self.workdir) / "nvme.raw", DISK_BYTES)
        cfg = GuestConfig(
            machine="pseries",
            kernel=image.kernel,
            initrd=image.initrd,
            append=cmdline_arg(SCENARIOS),
            nvme=NvmeDisk(disk, serial=SERIAL),
            memory_mib=memory_mib,
            paused=True,
            extra_args=("-action", "shutdown=pause"),
        )
        inst = QemuInstance(cfg, workdir, build)
        events: list[dict[str, Any]] = []
        phbs: list[dict[str, Any]] = []
        try:
            inst.start()
            if policy:
                pol = inst.qmp.cmd("x-iommulab-spapr-set-ddw-policy", **policy)
                self.log.info("DDW policy: %s", pol)
                # The PHB was reset before QMP was up: reset its windows so
                # that the default window follows the policy (the guest's
                # device tree is rebuilt from them at CAS); only the windows,
                # not the whole machine (system_reset).
                inst.qmp.cmd("x-iommulab-spapr-window-reset")
            inst.qmp.cmd("cont")
            inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT)
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT)
            res: Any = inst.qmp.cmd("x-iommulab-spapr-query-phbs")
            phbs = res
            events = inst.qmp.events()
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        run = SpaprRun(parse_results(inst.console_text()), events, phbs[0], disk, inst.console_path)
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps(
                {"policy": policy, "results": run.results, "events": events, "phb": run.phb},
                indent=2,
            )
            + "\n"
        )
        self.check_nvme(run)
        return run

    def check_nvme(self, run: SpaprRun) -> None:
        failed = [r for r in run.results if r.get("ok") is not True]
        if failed:
            self.fail(f"scenarios failed: {json.dumps(failed)} (console: {run.console})")
        rws = [r for r in run.results if r["scenario"] == "nvme-rw"]
        self.assertEqual([r["size"] for r in rws], [4096, 64 << 20])
        for r in rws:
            self.assertEqual(r["sha256_read"], r["sha256_written"])
        self.assertEqual(sha256_prefix(run.disk, rws[-1]["size"]), rws[-1]["sha256_written"])

    def created(self, run: SpaprRun) -> dict[str, Any]:
        """The one window the guest created (event), which QEMU still lists."""
        creates = [e for e in run.window_events() if e["action"] == "create"]
        self.assertEqual(len(creates), 1, f"window events: {run.window_events()}")
        w: dict[str, Any] = creates[0]["window"]
        listed = {x["liobn"]: x for x in run.phb["windows"]}
        self.assertIn(w["liobn"], listed)
        self.assertEqual(listed[w["liobn"]]["bus-offset"], w["bus-offset"])
        return w

    def test_default_policy(self) -> None:
        """QEMU's defaults: the guest creates a 16M-page DDW at 1<<59 and direct-maps RAM."""
        run = self.run_guest({})
        w = self.created(run)
        self.assertEqual((w["bus-offset"], w["page-shift"]), (1 << 59, 24))
        self.assertGreaterEqual(w["size"], GiB)
        (ddw,) = run.ddws()
        self.assertTrue(ddw.direct)
        self.assertEqual((ddw.dma_base, ddw.tce_shift), (1 << 59, 24))
        # the direct mapping is in the window's TCEs: every page of RAM is there
        self.assertGreaterEqual(run.phb["windows"][-1]["entries-in-use"], GiB >> 24)

    def test_64k_pages_only(self) -> None:
        """Only 64 KiB IOMMU pages offered: the guest's DDW uses them."""
        run = self.run_guest({"page-shifts": [16]})
        w = self.created(run)
        self.assertEqual(w["page-shift"], 16)
        (ddw,) = run.ddws()
        self.assertEqual(ddw.tce_shift, 16)
        self.assertTrue(ddw.direct)

    def test_window_at_4g(self) -> None:
        """The 64-bit window at 4 GiB instead of 1<<59."""
        run = self.run_guest({"dma64-offset": 4 * GiB})
        w = self.created(run)
        self.assertEqual(w["bus-offset"], 4 * GiB)
        (ddw,) = run.ddws()
        self.assertEqual(ddw.dma_base, 4 * GiB)

    def test_window_too_small_for_direct_mapping(self) -> None:
        """A largest window of 512 MiB (8192 x 64K) for 1 GiB of RAM: dynamic TCEs in the DDW."""
        run = self.run_guest({"page-shifts": [16], "max-tces": 8192})
        w = self.created(run)
        self.assertEqual((w["page-shift"], w["size"]), (16, 512 << 20))
        (ddw,) = run.ddws()
        self.assertFalse(ddw.direct, "the window cannot map all RAM: dynamic mapping")

    def test_create_refused_falls_back(self) -> None:
        """Every create refused: the guest keeps using the default 32-bit window."""
        run = self.run_guest({"refuse-create": True})
        self.assertEqual([e for e in run.window_events() if e["action"] == "create"], [])
        self.assertEqual(run.ddws(), [])
        self.assertEqual([w["default"] for w in run.phb["windows"]], [True])
        self.assertTrue(
            any("create-pe-dma-window" in ln for ln in run.kernel_lines()),
            "the guest tried to create a window",
        )

    def test_ddw_off_by_policy(self) -> None:
        """ddw off before the guest starts: no DDW in its device tree, no RTAS DDW calls."""
        run = self.run_guest({"ddw": False})
        self.assertEqual(run.window_events(), [])
        self.assertEqual(run.ddws(), [])
        (dw,) = run.default_windows()
        self.assertEqual((dw.offset, dw.size), (0, GiB))

    def test_small_default_window(self) -> None:
        """ddw off and a 256 MiB default window: the guest's ibm,dma-window says so."""
        run = self.run_guest({"ddw": False, "default-window-size": 256 << 20})
        (dw,) = run.default_windows()
        self.assertEqual((dw.offset, dw.size), (0, 256 << 20))

    def test_single_window(self) -> None:
        """One window per PE: the guest removes its default window and creates the DDW at 0."""
        run = self.run_guest({"windows": 1})
        actions = [(e["action"], e["liobn"]) for e in run.window_events()]
        self.assertEqual(actions, [("remove", LIOBN0), ("create", LIOBN0)])
        w = self.created(run)
        self.assertEqual(w["bus-offset"], 0)
        self.assertEqual([x["liobn"] for x in run.phb["windows"]], [LIOBN0])
        (ddw,) = run.ddws()
        self.assertEqual(ddw.dma_base, 0)
        self.assertEqual(run.default_windows(), [], "the default window is gone")
