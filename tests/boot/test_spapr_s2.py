"""Boot tests of stage 2 beneath the guest's TCE tables (iommulab-spapr-s2).

pseries (sPAPR TCE windows and DDW) and PowerNV9/10 (PHB4/PHB5 IODA TCE
tables) guests whose PHB DMA goes through an iommulab stage-2 domain that
maps guest RAM 1:1.  QEMU starts paused; the test allocates and maps the
domain with the engine's x-iommulab-* commands on the iommulab-spapr-s2
device, attaches the PHB with x-iommulab-attach (device=s2), continues,
and checks that NVMe writes and reads back its patterns, that the DMA was
translated by stage 2 (the device's counters) and that nothing faulted.

Run:  .venv/bin/avocado run tests/boot/test_spapr_s2.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from avocado import Test
from stage2_guest import BOOT_TIMEOUT, MEMORY_MIB, S2, attach_identity_stage2, stage2_guest

from pyctl.guest.results import (
    BOOT_PATTERN,
    DONE_PATTERN,
    Scenario,
    parse_results,
    wait_pattern,
)
from pyctl.qemu.launcher import LaunchError, QemuInstance
from pyctl.qemu.machines import qemu_build_dir

SERIAL = "iommulab-s2"
SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": "4K"}),
    Scenario("nvme-rw", {"size": "64M"}),
]
# A PHB4/5 root bus holds only its root port: the stage-2 device sits on a
# second PHB's root bus and names the NVMe's PHB (pcie.0) with "phb".
PNV_S2 = (
    f"pnv-phb,chip-id=0,index=1,id=pcie.1 -device "
    f"iommulab-spapr-s2,id={S2},bus=pcie.1,addr=0.0,phb=pcie.0"
)


class SpaprStage2(Test):  # type: ignore[misc]
    """Guests whose PHB DMA is translated by the TCE tables, then stage 2.

    :avocado: tags=arch:ppc64le,spapr,stage2
    """

    timeout = BOOT_TIMEOUT + 120

    def run_guest(self, machine: str, s2_device: str) -> dict[str, Any]:
        """Boot with ``-device s2_device`` (more devices: " -device " between)."""
        build = qemu_build_dir()
        cfg, disk = stage2_guest(
            Path(self.workdir), machine, SCENARIOS, SERIAL, devices=s2_device.split(" -device ")
        )
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", build)
        counters: Any = None
        faults: Any = None
        try:
            inst.start()
            q = inst.qmp
            attach_identity_stage2(q)
            q.cmd("cont")
            inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT)
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT)
            counters = q.cmd("x-iommulab-query-counters", iommu=S2)
            faults = q.cmd("x-iommulab-query-faults", iommu=S2)
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        results = parse_results(inst.console_text())
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps({"results": results, "counters": counters, "faults": faults}, indent=2)
            + "\n"
        )
        failed = [r for r in results if r.get("ok") is not True]
        if failed:
            self.fail(f"scenarios failed: {json.dumps(failed)} (console: {inst.console_path})")
        rws = [r for r in results if r["scenario"] == "nvme-rw"]
        self.assertEqual([r["size"] for r in rws], [4096, 64 << 20])
        for r in rws:
            self.assertEqual(r["sha256_read"], r["sha256_written"])
        with disk.open("rb") as f:
            on_disk = hashlib.sha256(f.read(rws[-1]["size"])).hexdigest()
        self.assertEqual(on_disk, rws[-1]["sha256_written"])
        self.log.info("stage-2 counters: %s", counters)
        # the DMA went through stage 2 (every access is a hit or a miss)
        self.assertGreater(counters["hits"] + counters["misses"], 64 << 20 >> 16)
        self.assertEqual(faults["faults"], [])
        self.assertEqual(counters["faults"], 0)
        return {"counters": counters}

    def test_pseries(self) -> None:
        """pseries: TCE/DDW (direct-mapped 16M pages at 1<<59) over an identity stage 2.

        :avocado: tags=machine:pseries
        """
        self.run_guest("pseries", f"iommulab-spapr-s2,id={S2}")

    def test_powernv9(self) -> None:
        """PowerNV9: PHB4 TCE window and 64-bit bypass over an identity stage 2.

        :avocado: tags=machine:powernv9
        """
        self.run_guest("powernv9", PNV_S2)

    def test_powernv10(self) -> None:
        """PowerNV10: PHB5 over an identity stage 2.

        :avocado: tags=machine:powernv10
        """
        self.run_guest("powernv10", PNV_S2)


FAULT_SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": "4K"}),
    Scenario("wait-host", {"name": "unmapped"}),
    Scenario("nvme-rw", {"size": "64M"}),
    Scenario("wait-host", {"name": "remapped"}),
    Scenario("nvme-rw", {"size": "64M"}),
]
# The guest's kernel allocations (its NVMe queues and PRP lists among them)
# must stay mapped and dd's DMA buffers (user pages) must not: with
# movablecore= the top MOVABLE_MIB of RAM is ZONE_MOVABLE, which user
# pages take first and kernel allocations never use.  Stage 2 keeps the
# low FAULT_KEEP bytes mapped and loses the rest for the second nvme-rw;
# the guest waits for the host (wait-host) before and after it.
FAULT_KEEP = 256 << 20
MOVABLE_MIB = MEMORY_MIB - (FAULT_KEEP >> 20)


class SpaprStage2Fault(Test):  # type: ignore[misc]
    """Stage-2 unmap under guest NVMe I/O: faults, I/O errors, recovery.

    :avocado: tags=arch:ppc64le,spapr,stage2,fault,machine:pseries
    """

    timeout = BOOT_TIMEOUT * 2 + 120

    def test_pseries_unmap_under_io(self) -> None:
        """Unmap RAM above FAULT_KEEP before the second nvme-rw, remap before the third."""
        build = qemu_build_dir()
        cfg, disk = stage2_guest(
            Path(self.workdir),
            "pseries",
            FAULT_SCENARIOS,
            SERIAL,
            append=f"movablecore={MOVABLE_MIB}M",
            host_channel=True,
        )
        hole = {"iova": FAULT_KEEP, "size": (MEMORY_MIB << 20) - FAULT_KEEP}
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", build)
        faults: Any = None
        unmapped: Any = None
        after: Any = None
        try:
            inst.start()
            q = inst.qmp
            attach_identity_stage2(q)
            q.cmd("cont")
            inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT)
            at = inst.wait_for(wait_pattern("unmapped"), BOOT_TIMEOUT).end()
            unmapped = q.cmd("x-iommulab-unmap", iommu=S2, domain=1, ranges=[hole])
            inst.tell_guest("go")
            at = inst.wait_for(wait_pattern("remapped"), BOOT_TIMEOUT, start=at).end()
            faults = q.cmd("x-iommulab-query-faults", iommu=S2, clear=True)
            q.cmd(
                "x-iommulab-map",
                iommu=S2,
                domain=1,
                mappings=[{**hole, "addr": hole["iova"], "read": True, "write": True}],
            )
            inst.tell_guest("go")
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT, start=at)
            after = q.cmd("x-iommulab-query-faults", iommu=S2)
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        console = inst.console_text()
        results = parse_results(console)
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps(
                {"results": results, "unmapped": unmapped, "faults": faults, "after": after},
                indent=2,
            )
            + "\n"
        )
        self.assertEqual(unmapped["unmapped"], hole["size"])
        rws = [r for r in results if r["scenario"] == "nvme-rw"]
        self.assertEqual(len(rws), 3, f"console: {inst.console_path}")
        before, broken, recovered = rws
        self.assertTrue(before["ok"], json.dumps(before))
        # stage 2 refused the DMA: faults with IPAs inside the hole
        self.assertTrue(faults["faults"], "no stage-2 fault while RAM was unmapped")
        lo, hi = hole["iova"], hole["iova"] + hole["size"]
        for f in faults["faults"]:
            self.assertEqual(f["stage"], "stage2")
            self.assertEqual(f["reason"], "not-present")
            self.assertTrue(lo <= f["iova"] < hi, f"fault IPA {f['iova']:#x} outside the hole")
        self.assertFalse(broken["ok"], json.dumps(broken))
        # remapped: the guest recovers, its data reaches the disk
        self.assertTrue(recovered["ok"], json.dumps(recovered))
        self.assertEqual(recovered["sha256_read"], recovered["sha256_written"])
        with disk.open("rb") as fh:
            on_disk = hashlib.sha256(fh.read(recovered["size"])).hexdigest()
        self.assertEqual(on_disk, recovered["sha256_written"])
        self.assertEqual(after["faults"], [])
        self.log.info(
            "faults while unmapped: %d (dropped %d), first IPA %#x",
            len(faults["faults"]),
            faults["dropped"],
            faults["faults"][0]["iova"],
        )
        # The guest must see an I/O error, not data it took for good.  Without
        # patch 0014, QEMU's dma_blk_io() maps guest memory with
        # address_space_map(), whose bounce buffer ignores the refused
        # translation, and NVMe completes the command successfully.
        self.assertRegex(
            broken.get("error", ""),
            r"O_DIRECT (write|read).*failed|Input/output error",
            "silent corruption: dd succeeded but read back other data while stage 2 "
            "refused the DMA",
        )
