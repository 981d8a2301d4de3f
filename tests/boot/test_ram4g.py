"""Guests with RAM beyond 4 GiB, all of it mapped IOVA = GPA through the iommufd model.

The model takes each requester's reserved regions from the device
(``x-iommulab-query-hw-info``).  pseries RAM runs straight through
0xfee00000, x86's MSI window, which the sPAPR stage 2 does not reserve: the
model once reserved it for every requester, so RAM above 4 GiB on pseries
could not be mapped.  q35 reserves it (its vIOMMU reports the window) and has
RAM above 4 GiB past the PCI hole.

Each guest boots paused; pyctl maps all guest RAM into an IOAS at IOVA = GPA
(GuestRamMap, 1 GiB areas) and attaches the NVMe's requester (pseries: the
PHB's stage 2 under its TCE tables; q35: the NVMe behind iommulab-viommu).
``movablecore=1G`` puts the top GiB of RAM, above 4 GiB on both machines, in
ZONE_MOVABLE: dd's O_DIRECT buffers (user pages) come from there, kernel
allocations (NVMe queues, PRP lists) never do.  Then, in steps the guest
waits for:

1. nvme-rw 4K: passes, no fault;
2. the host unmaps that top GiB from the IOAS; nvme-rw 64M fails with stage-2
   faults, every one inside it (proof that the buffers live above 4 GiB);
3. the host maps it again; nvme-rw 64M passes with no fault, bytes checked on
   the disk file.

Run:  .venv/bin/avocado run tests/boot/test_ram4g.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from avocado import Test
from stage2_guest import BOOT_TIMEOUT, S2, stage2_guest

from pyctl.guest.results import BOOT_PATTERN, DONE_PATTERN, Scenario, parse_results, wait_pattern
from pyctl.iommufd import FIXED_IOVA, READABLE, U64_MAX, WRITEABLE, IommufdContext
from pyctl.iommufd.guestmap import GuestRamMap
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.iommufd.spapr_qmp import SpaprQmpBackend
from pyctl.qemu.launcher import LaunchError, QemuInstance
from pyctl.qemu.machines import qemu_build_dir

GIB = 1 << 30
SERIAL = "iommulab-ram4g"
VIOMMU = "viommu0"
SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": "4K"}),
    Scenario("wait-host", {"name": "cut"}),
    Scenario("nvme-rw", {"size": "64M"}),
    Scenario("wait-host", {"name": "restored"}),
    Scenario("nvme-rw", {"size": "64M"}),
]


class RamBeyond4G(Test):  # type: ignore[misc]
    """All RAM of a 5 GiB pseries and a 4 GiB q35 mapped through the model, NVMe I/O
    with buffers above 4 GiB.

    :avocado: tags=stage2,iommufd,ram4g
    """

    timeout = BOOT_TIMEOUT * 2 + 120

    def run_guest(
        self, machine: str, memory_mib: int, iommu: str, requester: str, top: tuple[int, int]
    ) -> tuple[dict[str, Any], Path]:
        devices = (
            (f"iommulab-spapr-s2,id={S2}",)
            if machine == "pseries"
            else (f"iommulab-viommu,id={VIOMMU}",)
        )
        cfg, disk = stage2_guest(
            Path(self.workdir),
            machine,
            SCENARIOS,
            SERIAL,
            devices=devices,
            append="movablecore=1G",
            memory_mib=memory_mib,
            host_channel=True,
        )
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", qemu_build_dir())
        seen: dict[str, Any] = {}
        cut_iova, cut_size = top
        try:
            inst.start()
            q = inst.qmp
            be = (SpaprQmpBackend if machine == "pseries" else QmpBackend)(q, iommu=iommu)
            ctx = IommufdContext(be)
            ioas = ctx.ioas_alloc()
            ram = GuestRamMap(ctx, ioas, be, batch=GIB)
            seen["ram"] = [(r.start, r.size) for r in ram.map_all()]
            dev = ctx.bind(requester)
            ctx.attach(dev, ioas)
            seen["reserved"] = ctx.reserved(ioas)
            seen["msi_window"] = ctx.get_hw_info(dev).msi_window
            seen["areas"] = [(a.iova, a.last) for a in ctx.areas(ioas)]
            q.cmd("cont")
            inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT)

            at = inst.wait_for(wait_pattern("cut"), BOOT_TIMEOUT).end()
            seen["faults_before"] = q.cmd("x-iommulab-query-faults", iommu=iommu, clear=True)
            seen["unmapped"] = ctx.ioas_unmap(ioas, cut_iova, cut_size)
            inst.tell_guest("go")

            at = inst.wait_for(wait_pattern("restored"), BOOT_TIMEOUT, start=at).end()
            seen["faults_cut"] = q.cmd("x-iommulab-query-faults", iommu=iommu, clear=True)
            ctx.ioas_map(ioas, cut_iova, cut_size, FIXED_IOVA | READABLE | WRITEABLE, cut_iova)
            inst.tell_guest("go")
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT, start=at)
            seen["faults_end"] = q.cmd("x-iommulab-query-faults", iommu=iommu)
            seen["problems"] = ctx.check_hardware()
            # faults of the NVMe's requester only (q35's AHCI sits blocked behind the
            # vIOMMU and faults at every boot)
            seen["requester"] = be.device_info(requester).device
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        seen["results"] = parse_results(inst.console_text())
        (Path(self.outputdir) / "results.json").write_text(json.dumps(seen, indent=2) + "\n")
        return seen, disk

    def check(self, seen: dict[str, Any], disk: Path, memory: int, top: tuple[int, int]) -> None:
        # all RAM is in the IOAS at IOVA = GPA (q35's flat view has a few KiB of
        # ROM and VGA holes below 1 MiB), the top GiB among it
        mapped = sum(size for _, size in seen["ram"])
        self.assertTrue(memory - (1 << 20) < mapped <= memory, f"{mapped:#x} of {memory:#x}")
        self.assertTrue(any(s <= top[0] and top[0] + top[1] <= s + n for s, n in seen["ram"]))
        self.assertEqual(seen["unmapped"], top[1])
        self.assertEqual(seen["problems"], [], "the model and the device agree")
        rws = [r for r in seen["results"] if r["scenario"] == "nvme-rw"]
        self.assertEqual([r["ok"] for r in rws], [True, False, True], json.dumps(rws))

        def ours(key: str) -> list[dict[str, Any]]:
            return [f for f in seen[key]["faults"] if f["device"] == seen["requester"]]

        self.assertEqual(ours("faults_before"), [], "no fault with all RAM mapped")
        # the buffers are above 4 GiB: with the top GiB unmapped, every fault is there
        lo, hi = top[0], top[0] + top[1]
        cut = ours("faults_cut")
        self.assertTrue(cut, "no fault while the top GiB was unmapped")
        for f in cut:
            self.assertEqual((f["stage"], f["reason"]), ("stage2", "not-present"))
            self.assertTrue(lo <= f["iova"] < hi, f"fault IPA {f['iova']:#x} outside the cut")
        self.assertRegex(rws[1].get("error", ""), r"failed|Input/output error")
        # mapped again: the I/O passes with no fault, and its bytes are on the disk
        self.assertEqual(ours("faults_end"), [])
        last = rws[2]
        self.assertEqual(last["sha256_read"], last["sha256_written"])
        with disk.open("rb") as fh:
            self.assertEqual(
                hashlib.sha256(fh.read(last["size"])).hexdigest(), last["sha256_written"]
            )
        self.log.info("faults while cut: %d, first IPA %#x", len(cut), cut[0]["iova"])

    def test_pseries_5g(self) -> None:
        """pseries, 5 GiB: RAM through 0xfee00000 and to 5 GiB, no region reserved.

        :avocado: tags=arch:ppc64le,machine:pseries,spapr
        """
        top = (4 * GIB, GIB)
        seen, disk = self.run_guest("pseries", 5 << 10, S2, S2, top)
        # nothing reserved inside the 48-bit aperture: the s2 device reports no region
        self.assertEqual(seen["reserved"], [(1 << 48, U64_MAX)])
        self.assertIsNone(seen["msi_window"])
        # one IOAS area runs straight across x86's MSI window
        self.assertIn((3 * GIB, 4 * GIB - 1), seen["areas"])
        self.check(seen, disk, 5 * GIB, top)

    def test_q35_4g(self) -> None:
        """q35, 4 GiB: 2 GiB below the PCI hole, 2 GiB from 4 GiB; the MSI window reserved.

        :avocado: tags=arch:x86_64,machine:q35
        """
        top = (5 * GIB, GIB)
        seen, disk = self.run_guest("q35", 4 << 10, VIOMMU, "nvme0", top)
        msi = seen["msi_window"]
        self.assertIsNotNone(msi, "iommulab-viommu reports its MSI window")
        self.assertIn(tuple(msi), seen["reserved"])
        self.assertIn((4 * GIB, 5 * GIB - 1), seen["areas"])
        self.check(seen, disk, 4 * GIB, top)
