"""Reboot with live iommulab domains: a reset keeps the domains, drops the IOTLB, and
the rebooted guest's NVMe I/O goes through the same stage 2 again.

pseries (iommulab-spapr-s2 beneath the PHB's TCE tables) and q35
(iommulab-viommu, the NVMe attached to a stage-2 domain) boot paused; the
test maps all guest RAM at IPA = PA in stage-2 domain 1 and attaches, then
the guest runs, per boot: nvme-probe, nvme-rw of the whole disk (q35: 512
MiB, more than the agent allowed before), nvme-rw of one page more than the
disk (refused by the agent), and wait-host "reset".  At the first wait the
test stops the machine and issues QMP system_reset (the launcher no longer
passes -no-reboot): the domain and the attachment are there afterwards, the
IOTLB is empty.  The guest boots again, runs the same scenarios, and this
time the host answers; the second pattern must be in the disk file.

Run:  .venv/bin/avocado run tests/boot/test_reboot.py
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avocado import Test
from stage2_guest import BOOT_TIMEOUT, DISK_BYTES, S2, attach_identity_stage2, stage2_guest

from pyctl.guest.results import BOOT_PATTERN, DONE_PATTERN, Scenario, parse_results, wait_pattern
from pyctl.qemu.launcher import LaunchError, QemuInstance
from pyctl.qemu.machines import qemu_build_dir
from pyctl.qemu.qmp import QmpSession

SERIAL = "iommulab-reboot"
VIOMMU = "viommu0"
Q35_MEMORY_MIB = 1536  # all below 4 GiB; tmpfs holds the 512 MiB pattern
Q35_DISK = 512 << 20


def scenarios(disk: int) -> list[Scenario]:
    return [
        Scenario("nvme-probe"),
        Scenario("nvme-rw", {"size": str(disk)}),
        Scenario("nvme-rw", {"size": str(disk + 4096)}),
        Scenario("wait-host", {"name": "reset"}),
    ]


def attach_identity_viommu(q: QmpSession, memory_mib: int) -> None:
    """q35: domain 1 maps guest RAM at IOVA = GPA; the NVMe is attached to it."""
    q.cmd("x-iommulab-domain-alloc", iommu=VIOMMU, domain=1, type="paging")
    q.cmd(
        "x-iommulab-map",
        iommu=VIOMMU,
        domain=1,
        mappings=[{"iova": 0, "size": memory_mib << 20, "addr": 0, "read": True, "write": True}],
    )
    q.cmd("x-iommulab-attach", iommu=VIOMMU, device="nvme0", mode="domain", domain=1)


class RebootWithDomains(Test):  # type: ignore[misc]
    """system_reset of a guest whose DMA goes through iommulab stage 2.

    :avocado: tags=reboot,stage2
    """

    timeout = BOOT_TIMEOUT * 2 + 180

    def reboot_twice(
        self, inst: QemuInstance, iommu: str, attach: Callable[[QmpSession], None]
    ) -> dict[str, Any]:
        """Boot, reset at the first wait, boot again, finish; the device state on the way."""
        seen: dict[str, Any] = {}
        try:
            inst.start()
            q = inst.qmp
            attach(q)
            q.cmd("cont")
            at = inst.wait_for(wait_pattern("reset"), BOOT_TIMEOUT).end()
            # stopped, so that no DMA refills the IOTLB between the reset and the query
            q.cmd("stop")
            seen["before"] = q.cmd("x-iommulab-query", iommu=iommu)
            seen["counters_before"] = q.cmd("x-iommulab-query-counters", iommu=iommu)
            q.events()
            q.cmd("system_reset")
            seen["reset_event"] = q.wait_event("RESET", 30)
            seen["after"] = q.cmd("x-iommulab-query", iommu=iommu)
            seen["counters_after_reset"] = q.cmd("x-iommulab-query-counters", iommu=iommu)
            q.cmd("cont")
            at = inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT, start=at).end()
            at = inst.wait_for(wait_pattern("reset"), BOOT_TIMEOUT, start=at).end()
            inst.tell_guest("go")
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT, start=at)
            # the agent powers off after DONE; -action shutdown=pause keeps QEMU up
            seen["shutdown_event"] = q.wait_event("SHUTDOWN", BOOT_TIMEOUT)
            seen["counters_end"] = q.cmd("x-iommulab-query-counters", iommu=iommu)
            seen["faults_end"] = q.cmd("x-iommulab-query-faults", iommu=iommu)
            seen["status_end"] = q.cmd("query-status")["status"]
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        seen["results"] = parse_results(inst.console_text())
        (Path(self.outputdir) / "results.json").write_text(json.dumps(seen, indent=2) + "\n")
        return seen

    def check(self, seen: dict[str, Any], disk: Path, size: int) -> None:
        results = seen["results"]
        boots = [r for r in results if r["scenario"] == "boot"]
        self.assertEqual(len(boots), 2, "the guest booted twice")
        # the reset was QMP's, and the domains and attachments are all still there
        self.assertEqual(seen["reset_event"]["data"]["reason"], "host-qmp-system-reset")
        self.assertEqual(seen["after"]["domains"], seen["before"]["domains"])
        self.assertEqual(seen["after"]["devices"], seen["before"]["devices"])
        (dom,) = seen["after"]["domains"]
        attached = [d["device"] for d in seen["after"]["devices"] if d.get("domain") == 1]
        self.assertEqual((dom["domain"], dom["devices"], len(attached)), (1, 1, 1))
        # ... but not the IOTLB
        self.assertGreater(seen["counters_before"]["iotlb-entries"], 0)
        self.assertEqual(seen["counters_after_reset"]["iotlb-entries"], 0)
        # both boots: the whole disk written and read back; one page more refused
        rws = [r for r in results if r["scenario"] == "nvme-rw"]
        self.assertEqual([r["ok"] for r in rws], [True, False, True, False], json.dumps(rws))
        first, too_big, second, _ = rws
        for r in (first, second):
            self.assertEqual(r["size"], size)
            self.assertEqual(r["sha256_read"], r["sha256_written"])
        self.assertNotEqual(first["sha256_written"], second["sha256_written"])
        self.assertIn(f"exceeds nvme0n1 capacity of {size} bytes", too_big["error"])
        with disk.open("rb") as f:
            on_disk = hashlib.sha256(f.read(size)).hexdigest()
        self.assertEqual(on_disk, second["sha256_written"], "the rebooted guest's DMA hit the disk")
        (waited,) = [r for r in results if r["scenario"] == "wait-host"]
        self.assertEqual((waited["ok"], waited["said"]), (True, "go"))
        # after the reboot the DMA went through stage 2 again (the counters run on
        # across a reset), and the attached device never faulted (q35's AHCI,
        # blocked, does: the vIOMMU reports it)
        reset, end = seen["counters_after_reset"], seen["counters_end"]
        translated = end["hits"] + end["misses"] - reset["hits"] - reset["misses"]
        self.assertGreater(translated, size >> 16)
        ours = [f for f in seen["faults_end"]["faults"] if f["device"] in attached]
        self.assertEqual(ours, [])
        self.assertEqual(seen["shutdown_event"]["data"]["reason"], "guest-shutdown")
        self.assertEqual(seen["status_end"], "shutdown", "QEMU stays up after the power-off")

    def test_pseries(self) -> None:
        """pseries: TCE/DDW over an identity stage 2 (iommulab-spapr-s2), rebooted.

        :avocado: tags=arch:ppc64le,machine:pseries,spapr
        """
        cfg, disk = stage2_guest(
            Path(self.workdir), "pseries", scenarios(DISK_BYTES), SERIAL, host_channel=True
        )
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", qemu_build_dir())
        seen = self.reboot_twice(inst, S2, attach_identity_stage2)
        self.check(seen, disk, DISK_BYTES)

    def test_q35(self) -> None:
        """q35: the NVMe attached to an identity stage-2 domain of iommulab-viommu, rebooted.

        :avocado: tags=arch:x86_64,machine:q35
        """
        cfg, disk = stage2_guest(
            Path(self.workdir),
            "q35",
            scenarios(Q35_DISK),
            SERIAL,
            devices=(f"iommulab-viommu,id={VIOMMU}",),
            disk_bytes=Q35_DISK,
            memory_mib=Q35_MEMORY_MIB,
            host_channel=True,
        )
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", qemu_build_dir())
        seen = self.reboot_twice(inst, VIOMMU, lambda q: attach_identity_viommu(q, Q35_MEMORY_MIB))
        self.check(seen, disk, Q35_DISK)
