"""Guest memory hotplug on pseries with stage 2 beneath the TCE tables.

The control plane (pyctl's iommufd model over QMP, on the iommulab-spapr-s2
device) maps all guest RAM into an IOAS at IOVA = GPA and attaches the PHB's
stage-2 requester to it.  The guest boots with DDW: its kernel direct-maps
RAM, up to the hotplug maximum, in its 64-bit window.  Then, in steps the
guest waits for (the agent's wait-host scenario):

1. "plug-raw": a pc-dimm is plugged behind the control plane's back.  The
   guest onlines it (ZONE_MOVABLE, ``movable_node``, so the agent's DMA
   buffers come from it) and its kernel puts TCEs for it into the direct
   window.  The next nvme-rw must fail with stage-2 faults inside the DIMM:
   proof that the DMA really goes to the new memory.
2. "synced": ``GuestRamMap.sync()`` re-reads QEMU's memory map and maps the
   DIMM; the same nvme-rw now passes.
3. "plug": ``GuestRamMap.hotplug_dimm()`` plugs a second DIMM and maps it in
   one step; the guest's nvme-rw passes with no fault at all.

Run:  .venv/bin/avocado run tests/boot/test_spapr_hotplug.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from avocado import Test
from stage2_guest import BOOT_TIMEOUT, MEMORY_MIB, S2, stage2_guest

from pyctl.guest.results import (
    BOOT_PATTERN,
    DONE_PATTERN,
    DdwWindow,
    Scenario,
    parse_results,
    wait_pattern,
)
from pyctl.iommufd import IommufdContext
from pyctl.iommufd.guestmap import GuestRamMap
from pyctl.iommufd.spapr_qmp import SpaprQmpBackend
from pyctl.qemu.guestram import guest_ram
from pyctl.qemu.launcher import LaunchError, QemuInstance
from pyctl.qemu.machines import qemu_build_dir

MIB = 1 << 20
DIMM = 512 * MIB
MAX_MEMORY_MIB = MEMORY_MIB + 2 * DIMM // MIB
SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": "4K"}),
    Scenario("wait-host", {"name": "plug-raw"}),
    Scenario("mem-hotplug", {"size": "512M"}),
    Scenario("nvme-rw", {"size": "64M"}),
    Scenario("wait-host", {"name": "synced"}),
    Scenario("nvme-rw", {"size": "64M"}),
    Scenario("wait-host", {"name": "plug"}),
    Scenario("mem-hotplug", {"size": "1G"}),
    Scenario("nvme-rw", {"size": "64M"}),
    Scenario("dmesg-iommu"),
]


class SpaprMemoryHotplug(Test):  # type: ignore[misc]
    """pc-dimm hotplug on pseries, followed into stage 2 by the control plane.

    :avocado: tags=arch:ppc64le,spapr,stage2,hotplug,machine:pseries
    """

    timeout = BOOT_TIMEOUT * 2 + 120

    def test_pseries_dimm_hotplug(self) -> None:
        build = qemu_build_dir()
        cfg, disk = stage2_guest(
            Path(self.workdir),
            "pseries",
            SCENARIOS,
            "iommulab-hotplug",
            append="movable_node",
            memory_slots=2,
            max_memory_mib=MAX_MEMORY_MIB,
            host_channel=True,
        )  # fmt: skip
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", build)
        seen: dict[str, Any] = {}
        try:
            inst.start()
            q = inst.qmp
            be = SpaprQmpBackend(q, iommu=S2)  # the launcher's QMP session, shared
            try:
                ctx = IommufdContext(be)
                ioas = ctx.ioas_alloc()
                ram = GuestRamMap(ctx, ioas, be)
                seen["boot_ram"] = [vars(r) for r in ram.map_all()]
                ctx.attach(ctx.bind(S2), ioas)
                q.cmd("cont")
                inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT)

                # 1. a DIMM the control plane does not know about
                at = inst.wait_for(wait_pattern("plug-raw"), BOOT_TIMEOUT).end()
                q.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": "m1", "size": DIMM})
                q.cmd("device_add", driver="pc-dimm", id="dimm1", memdev="m1")
                seen["ram_after_raw_plug"] = [vars(r) for r in guest_ram(q)]
                inst.tell_guest("go")

                # 2. the control plane catches up
                at = inst.wait_for(wait_pattern("synced"), BOOT_TIMEOUT, start=at).end()
                seen["faults_unsynced"] = q.cmd("x-iommulab-query-faults", iommu=S2, clear=True)
                synced = ram.sync()
                seen["synced"] = [vars(r) for r in synced.added]
                inst.tell_guest("go")

                # 3. plugged and mapped in one step
                at = inst.wait_for(wait_pattern("plug"), BOOT_TIMEOUT, start=at).end()
                plugged = ram.hotplug_dimm("dimm2", DIMM)
                seen["plugged"] = [vars(r) for r in plugged.added]
                inst.tell_guest("go")

                inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT, start=at)
                seen["faults_after"] = q.cmd("x-iommulab-query-faults", iommu=S2)
                seen["ioas_areas"] = [(a.iova, a.length) for a in ctx.areas(ioas)]
                # the guest's TCEs (the machine is paused at power-off, tables intact)
                seen["tces"] = {
                    w.start: [(e.addr, 1 << w.page_shift) for e in be.read_tces("nvme0", w.index)]
                    for w in be.windows("nvme0")
                }
            finally:
                be.close()
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        results = parse_results(inst.console_text())
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps({"results": results, "seen": seen}, indent=2, default=str) + "\n"
        )
        self.check(results, seen, disk)

    def check(self, results: list[dict[str, Any]], seen: dict[str, Any], disk: Path) -> None:
        by = [r["scenario"] for r in results]
        self.assertEqual(by[0], "boot")
        self.assertEqual(
            by[1:], [s.name for s in SCENARIOS], f"results: {json.dumps(results)[:2000]}"
        )
        (_, probe, small, _, hp1, broken, _, fixed, _, hp2, good, _) = results
        for r in (probe, small, hp1, fixed, hp2, good):
            self.assertTrue(r["ok"], json.dumps(r))

        # QEMU put the DIMMs right after boot RAM; the guest onlined them movable
        dimm1 = (MEMORY_MIB * MIB, DIMM)
        dimm2 = (MEMORY_MIB * MIB + DIMM, DIMM)
        self.assertEqual([(r["start"], r["size"]) for r in seen["synced"]], [dimm1])
        self.assertEqual([(r["start"], r["size"]) for r in seen["plugged"]], [dimm2])
        for hp, (lo, size) in ((hp1, dimm1), (hp2, (dimm1[0], 2 * DIMM))):
            blocks = hp["added"]
            self.assertEqual(sum(b["size"] for b in blocks), size)
            self.assertEqual(min(b["start"] for b in blocks), lo)
            self.assertTrue(all(b["zone"] == "Movable" for b in blocks), json.dumps(blocks))

        # 1: stage 2 lacked the DIMM: faults inside it, and an I/O error
        faults = seen["faults_unsynced"]["faults"]
        self.assertTrue(faults, "no stage-2 fault while the DIMM was not mapped")
        for f in faults:
            self.assertEqual((f["stage"], f["reason"]), ("stage2", "not-present"))
            self.assertTrue(
                dimm1[0] <= f["iova"] < dimm1[0] + DIMM, f"fault IPA {f['iova']:#x} not in DIMM 1"
            )
        self.assertFalse(broken["ok"], json.dumps(broken))
        self.assertRegex(broken.get("error", ""), r"O_DIRECT (write|read).*failed")

        # 2 and 3: mapped, the same I/O passes and nothing faults
        for r in (fixed, good):
            self.assertEqual(r["sha256_read"], r["sha256_written"])
        with disk.open("rb") as fh:
            self.assertEqual(
                hashlib.sha256(fh.read(good["size"])).hexdigest(), good["sha256_written"]
            )
        self.assertEqual(seen["faults_after"]["faults"], [])
        self.assertEqual(
            sorted(seen["ioas_areas"]),
            [(0, MEMORY_MIB * MIB), dimm1, dimm2],
        )

        # the guest's direct DDW window spans the hotplug maximum, and its
        # kernel put TCEs for both DIMMs into it when they came online
        dma = results[-1]
        windows = [DdwWindow.from_hex(p["path"], p["hex"]) for p in dma["dt_windows"]]
        direct = [w for w in windows if w.direct]
        self.assertEqual(len(direct), 1, json.dumps(dma["dt_windows"]))
        self.assertGreaterEqual(direct[0].size, MAX_MEMORY_MIB * MIB)
        tces = seen["tces"][direct[0].dma_base]
        covered = sum(size for addr, size in tces if dimm1[0] <= addr < dimm2[0] + DIMM)
        self.assertEqual(covered, 2 * DIMM, "the direct window lacks TCEs for the DIMMs")
        self.log.info("faults while DIMM 1 was unmapped: %d", len(faults))
