"""PCI hot-unplug and re-plug on pseries behind iommulab-spapr-s2, under I/O.

Two NVMe functions sit on the default PHB, whose DMA goes through stage 2
(the PHB is the iommulab-spapr-s2 requester; pyctl's model maps all guest RAM
at IOVA = GPA and attaches it, with an UnplugFollower on DEVICE_DELETED).
Linux 6.12 does no PCI DLPAR in the kernel (ras.c hands PCI hotplug events to
rtas_errd/drmgr; /sys/kernel/dlpar knows memory, CPUs, pmem and device-tree
nodes only), so the agent does drmgr's part itself: the kernel's sysfs for
the PCI device and the device tree, and one RTAS set-indicator call
(/bin/rtas-set-indicator, guest/dlpar) for the DRC.  In steps the guest waits
for (wait-host):

1. the guest writes and reads 16 MiB on each NVMe;
2. "unplug": the host ``device_del``'s the second one; the guest removes it
   (pci-unplug) while O_DIRECT reads run on it and a 64 MiB O_DIRECT write
   runs on the first, then isolates its DRC, so QEMU sends DEVICE_DELETED.
   The stage-2 requester is the whole PHB (the PE), not the function: the
   model has nothing to drop and the PHB's attachment is unchanged; the
   write that crossed the removal is on the first disk;
3. "plug": the host ``device_add``'s a new NVMe on a fresh disk into the same
   slot; the guest acquires the DRC again (unisolate, configure-connector,
   PCI rescan: pci-plug) and 16 MiB pass, in the new disk file only.

What "inherit" means here: the TCE windows and the stage-2 attachment belong
to the PHB and are shared by every function on it, by PAPR's design, so the
new function uses them as any function on the PHB does.  What belonged to
the old function (its DRC state, its device-tree node, its QOM device, its
disk) is gone: the slot has to be acquired from scratch.

Run:  .venv/bin/avocado run tests/boot/test_spapr_unplug.py
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from avocado import Test
from stage2_guest import BOOT_TIMEOUT, S2, stage2_guest

from pyctl.guest import cpio
from pyctl.guest.results import BOOT_PATTERN, DONE_PATTERN, Scenario, parse_results, wait_pattern
from pyctl.iommufd import IommufdContext
from pyctl.iommufd.guestmap import GuestRamMap
from pyctl.iommufd.objects import Device
from pyctl.iommufd.spapr_qmp import SpaprQmpBackend
from pyctl.iommufd.unplug import UnplugFollower
from pyctl.qemu.launcher import LaunchError, QemuInstance, create_raw_disk
from pyctl.qemu.machines import qemu_build_dir

REPO = Path(__file__).resolve().parents[2]
IO = 16 << 20
STAYS, GOES, NEW = "iommulab-stays", "iommulab-goes", "iommulab-new"
BUSY = 64 << 20
SLOT = "0x2"
SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": str(IO), "serial": STAYS}),
    Scenario("nvme-rw", {"size": str(IO), "serial": GOES}),
    Scenario("wait-host", {"name": "unplug"}),
    Scenario("pci-unplug", {"serial": GOES, "busy": STAYS, "size": str(BUSY)}),
    Scenario("wait-host", {"name": "plug"}),
    Scenario("pci-plug", {"serial": NEW}),
    Scenario("nvme-rw", {"size": str(IO), "serial": NEW}),
]


def with_rtas_helper(initrd: Path, workdir: Path) -> Path:
    """``initrd`` plus /bin/rtas-set-indicator (guest/dlpar, static ppc64le) as a
    second cpio member (the kernel unpacks concatenated archives in order)."""
    src = REPO / "guest" / "dlpar" / "rtas-set-indicator.c"
    binary = workdir / "rtas-set-indicator"
    subprocess.run(
        ["powerpc64le-linux-gnu-gcc", "-static", "-O2", "-Wall", "-o", str(binary), str(src)],
        check=True, timeout=120,
    )  # fmt: skip
    arc = cpio.Archive()
    arc.add(cpio.directory("bin"))
    arc.add(cpio.regular("bin/rtas-set-indicator", binary.read_bytes(), 0o755))
    out = workdir / "initrd-dlpar.gz"
    out.write_bytes(initrd.read_bytes() + gzip.compress(arc.to_bytes(), mtime=0))
    return out


class SpaprPciUnplug(Test):  # type: ignore[misc]
    """device_del of an NVMe on a stage-2 PHB, finished by the guest's DLPAR removal.

    :avocado: tags=arch:ppc64le,spapr,stage2,hotplug,machine:pseries
    """

    timeout = BOOT_TIMEOUT * 2 + 120

    def test_pseries_nvme_unplug(self) -> None:
        work = Path(self.workdir)
        goes_disk = create_raw_disk(work / "goes.raw", 64 << 20)
        new_disk = create_raw_disk(work / "new.raw", 64 << 20)
        cfg, disk = stage2_guest(
            work, "pseries", SCENARIOS, STAYS, host_channel=True,
            extra_args=(
                "-drive", f"file={goes_disk},if=none,id=goes-drive,format=raw",
                "-device", f"nvme,id=goes,drive=goes-drive,serial={GOES},addr={SLOT}",
            ),
        )  # fmt: skip
        assert cfg.initrd is not None
        cfg = dataclasses.replace(cfg, initrd=with_rtas_helper(cfg.initrd, work))
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", qemu_build_dir())
        seen: dict[str, Any] = {}
        try:
            inst.start()
            q = inst.qmp
            be = SpaprQmpBackend(q, iommu=S2)
            try:
                ctx = IommufdContext(be)
                follower = UnplugFollower(ctx)
                ioas = ctx.ioas_alloc()
                GuestRamMap(ctx, ioas, be).map_all()
                ctx.attach(ctx.bind(S2), ioas)
                q.cmd("cont")
                inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT)

                at = inst.wait_for(wait_pattern("unplug"), BOOT_TIMEOUT).end()
                seen["before"] = q.cmd("x-iommulab-query", iommu=S2)
                q.events()
                q.cmd("device_del", id="goes")
                inst.tell_guest("go")
                while q.wait_event("DEVICE_DELETED", BOOT_TIMEOUT)["data"].get("device") != "goes":
                    pass
                seen["removed"] = follower.follow(be)
                seen["after"] = q.cmd("x-iommulab-query", iommu=S2)
                seen["bound"] = sorted(
                    o.name for o in ctx.objects().values() if isinstance(o, Device)
                )
                seen["check"] = ctx.check_hardware()
                seen["peripherals"] = [
                    p["name"] for p in q.cmd("qom-list", path="/machine/peripheral")
                ]
                inst.tell_guest("go")

                # 3. a new NVMe on a fresh disk into the same slot
                at = inst.wait_for(wait_pattern("plug"), BOOT_TIMEOUT, start=at).end()
                q.cmd(
                    "blockdev-add",
                    **{
                        "driver": "raw",
                        "node-name": "new-disk",
                        "file": {"driver": "file", "filename": str(new_disk)},
                    },
                )
                q.cmd(
                    "device_add", driver="nvme", id="new", drive="new-disk", serial=NEW, addr=SLOT
                )
                inst.tell_guest("go")
                inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT, start=at)
                seen["end"] = q.cmd("x-iommulab-query", iommu=S2)
                seen["check_end"] = ctx.check_hardware()
                seen["faults"] = q.cmd("x-iommulab-query-faults", iommu=S2)
            finally:
                be.close()
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        results = parse_results(inst.console_text())
        for key in ("before", "after", "end"):
            for d in seen[key].get("domains", []):
                d["mappings"] = len(d["mappings"])
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps({"results": results, "seen": seen}, indent=2, default=str) + "\n"
        )
        self.check(results, seen, {"stays": disk, "goes": goes_disk, "new": new_disk})

    def check(
        self, results: list[dict[str, Any]], seen: dict[str, Any], disks: dict[str, Path]
    ) -> None:
        names = [r["scenario"] for r in results]
        self.assertEqual(names, ["boot", *(s.name for s in SCENARIOS)], json.dumps(results)[:3000])
        _, probe, rw0, rw1, _, unplug, _, plug, rw_new = results
        for r in (probe, rw0, rw1, unplug, plug, rw_new):
            self.assertTrue(r["ok"], json.dumps(r)[:3000])
        ctrl = {c["serial"]: c["name"] for c in probe["controllers"]}
        self.assertEqual(sorted(ctrl), sorted([STAYS, GOES]))
        self.assertEqual((rw0["dev"], rw1["dev"]), (ctrl[STAYS] + "n1", ctrl[GOES] + "n1"))

        # 2. the guest removed the function while both NVMe were busy, and
        # finished QEMU's device_del with one RTAS isolate
        self.assertEqual((unplug["ctrl"], unplug["removed"]), (ctrl[GOES], True))
        self.assertEqual(unplug["busy"], ctrl[STAYS] + "n1")
        self.assertEqual(unplug["isolate_status"], "0")
        self.assertTrue(unplug["dt_pruned"])
        self.assertTrue(unplug["reading_at_remove"], "no read in flight on the function removed")
        self.assertGreater(unplug["reads_before"], 0)
        self.assertTrue(unplug["writing_at_remove"], "the write to nvme0 ended before the removal")
        self.assertEqual(unplug["write_rc"], 0)
        self.assertEqual(unplug["sha256_read"], unplug["sha256_written"])
        self.assertEqual(sha256(disks["stays"], BUSY), unplug["sha256_written"])
        self.assertNotIn("goes", seen["peripherals"])
        # the PHB is the requester: no function was bound, so the model has
        # nothing to drop and the PHB stays attached, unchanged
        self.assertEqual(seen["removed"], [])
        self.assertEqual(seen["bound"], ["/machine/peripheral/" + S2])
        self.assertEqual(seen["check"], [])
        self.assertEqual(seen["after"]["devices"], seen["before"]["devices"])

        # 3. the new function needed a fresh DLPAR acquire of the same slot (the
        # old DRC state and device-tree node were gone); its I/O lands on its
        # own disk, the old disk keeps what was written before the unplug
        self.assertEqual((plug["pci"], plug["drc_index"]), (unplug["pci"], unplug["drc_index"]))
        self.assertEqual(plug["unisolate_status"], "0")
        self.assertEqual(rw_new["dev"], plug["ctrl"] + "n1")
        self.assertEqual(rw_new["sha256_read"], rw_new["sha256_written"])
        self.assertEqual(sha256(disks["new"], IO), rw_new["sha256_written"])
        self.assertEqual(sha256(disks["goes"], IO), rw1["sha256_written"])
        self.assertEqual(seen["end"]["devices"], seen["before"]["devices"])
        self.assertEqual(seen["check_end"], [])
        self.assertEqual(seen["faults"]["faults"], [])


def sha256(path: Path, size: int) -> str:
    with path.open("rb") as fh:
        return hashlib.sha256(fh.read(size)).hexdigest()
