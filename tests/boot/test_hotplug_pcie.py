"""PCIe hot-unplug and hot-plug of an NVMe behind iommulab-viommu (q35), under I/O.

The NVMe sits on a hotpluggable PCIe root port (native hotplug: the guest's
pciehp).  The control plane is pyctl's iommufd model over QMP: all guest RAM
in an IOAS at IOVA = GPA (GuestRamMap), the NVMe bound and attached to it (an
automatic HWPT), and an UnplugFollower on DEVICE_DELETED.  Then, in steps the
guest waits for (the agent's wait-host scenario):

1. the guest probes the NVMe and writes and reads 16 MiB through the vIOMMU;
2. "unplug": the host ``device_del``'s it; the guest's pciehp acks (slot
   power off) and QEMU sends DEVICE_DELETED.  The vIOMMU forgot the device
   (no longer listed); the model unbinds it and frees its automatic HWPT, so
   the device holds no domain at all.  The host then ``device_add``'s a new
   NVMe on a fresh disk into the same slot;
3. the new controller starts blocked (the vIOMMU's default mode), not in the
   old domain: the guest's probe fails (its admin queue cannot be read) and
   the vIOMMU reports the refused DMA; the agent waits until the driver let
   go of the function (nvme-unbound);
4. "attach": the control plane binds the new device and attaches it to the
   IOAS; the agent probes it again (nvme-rebind) and 16 MiB pass, checked in
   the new disk file.

Run:  .venv/bin/avocado run tests/boot/test_hotplug_pcie.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from avocado import Test
from stage2_guest import BOOT_TIMEOUT

from pyctl.guest.image import build_image
from pyctl.guest.results import (
    BOOT_PATTERN,
    DONE_PATTERN,
    Scenario,
    cmdline_arg,
    parse_results,
    wait_pattern,
)
from pyctl.iommufd import IommufdContext
from pyctl.iommufd.guestmap import GuestRamMap
from pyctl.iommufd.objects import Device, HwptPaging
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.iommufd.unplug import UnplugFollower
from pyctl.qemu.launcher import LaunchError, QemuInstance, create_raw_disk
from pyctl.qemu.machines import GuestConfig, qemu_build_dir

VIOMMU = "viommu0"
MEMORY_MIB = 1024
DISK = 64 << 20
IO = 16 << 20
OLD, NEW = "/machine/peripheral/nvme0", "/machine/peripheral/nvme1"
#: the failed probe gives up after nvme_core's admin timeout (60 s) and a reset
UNBOUND_WAIT = 240
SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": str(IO)}),
    Scenario("wait-host", {"name": "unplug"}),
    Scenario("nvme-unbound", {"wait": str(UNBOUND_WAIT)}),
    Scenario("wait-host", {"name": "attach"}),
    Scenario("nvme-rebind"),
    Scenario("nvme-probe", {"wait": "60"}),
    Scenario("nvme-rw", {"size": str(IO)}),
]


class PcieHotplugQ35(Test):  # type: ignore[misc]
    """NVMe unplugged and a new one plugged in the same slot behind iommulab-viommu.

    :avocado: tags=arch:x86_64,machine:q35,hotplug
    """

    timeout = BOOT_TIMEOUT * 2 + UNBOUND_WAIT + 120

    def test_q35_nvme_replug(self) -> None:
        work = Path(self.workdir)
        old_disk = create_raw_disk(work / "nvme0.raw", DISK)
        new_disk = create_raw_disk(work / "nvme1.raw", DISK)
        image = build_image("x86_64")
        cfg = GuestConfig(
            machine="q35",
            kernel=image.kernel,
            initrd=image.initrd,
            append=cmdline_arg(SCENARIOS),
            memory_mib=MEMORY_MIB,
            paused=True,
            host_channel=True,
            extra_args=(
                # native PCIe hotplug on the root port (the guest's pciehp), not ACPI's
                "-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
                "-device", f"iommulab-viommu,id={VIOMMU}",
                "-device", "pcie-root-port,id=rp0,chassis=1,slot=1",
                "-drive", f"file={old_disk},if=none,id=nvme0-drive,format=raw",
                "-device", "nvme,id=nvme0,drive=nvme0-drive,serial=iommulab-hp0,bus=rp0",
                "-action", "shutdown=pause",
            ),
        )  # fmt: skip
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", qemu_build_dir())
        seen: dict[str, Any] = {}
        try:
            inst.start()
            q = inst.qmp
            be = QmpBackend(q, iommu=VIOMMU)  # the launcher's session, shared
            ctx = IommufdContext(be)
            follower = UnplugFollower(ctx)
            ioas = ctx.ioas_alloc()
            GuestRamMap(ctx, ioas, be).map_all()
            old = ctx.bind("nvme0")
            seen["old_hwpt"] = ctx.attach(old, ioas)
            q.cmd("cont")
            inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT)

            # 2. unplug under the guest's ack, then a new NVMe in the same slot
            at = inst.wait_for(wait_pattern("unplug"), BOOT_TIMEOUT).end()
            seen["before"] = q.cmd("x-iommulab-query", iommu=VIOMMU)
            q.events()
            q.cmd("device_del", id="nvme0")
            while q.wait_event("DEVICE_DELETED", 60)["data"].get("device") != "nvme0":
                pass
            seen["after_unplug"] = q.cmd("x-iommulab-query", iommu=VIOMMU)
            seen["removed"] = follower.follow(be)
            seen["after_follow"] = q.cmd("x-iommulab-query", iommu=VIOMMU)
            seen["objects_after_unplug"] = {
                oid: type(o).__name__ for oid, o in ctx.objects().items()
            }
            seen["check_after_unplug"] = ctx.check_hardware()
            q.cmd("x-iommulab-query-faults", iommu=VIOMMU, clear=True)
            q.cmd(
                "blockdev-add",
                **{
                    "driver": "raw",
                    "node-name": "nvme1-disk",
                    "file": {"driver": "file", "filename": str(new_disk)},
                },
            )
            q.cmd(
                "device_add",
                driver="nvme",
                id="nvme1",
                drive="nvme1-disk",
                serial="iommulab-hp1",
                bus="rp0",
            )
            inst.tell_guest("go")

            # 4. the probe failed blocked; the control plane attaches the new device
            at = inst.wait_for(wait_pattern("attach"), UNBOUND_WAIT + 60, start=at).end()
            seen["blocked"] = q.cmd("x-iommulab-query", iommu=VIOMMU)
            seen["faults_blocked"] = q.cmd("x-iommulab-query-faults", iommu=VIOMMU, clear=True)
            new = ctx.bind("nvme1")
            seen["new_hwpt"] = ctx.attach(new, ioas)
            seen["check_attached"] = ctx.check_hardware()
            inst.tell_guest("go")

            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT, start=at)
            seen["faults_end"] = q.cmd("x-iommulab-query-faults", iommu=VIOMMU)
            seen["end"] = q.cmd("x-iommulab-query", iommu=VIOMMU)
            seen["devices_end"] = sorted(
                o.name for o in ctx.objects().values() if isinstance(o, Device)
            )
            seen["hwpts_end"] = sorted(
                oid for oid, o in ctx.objects().items() if isinstance(o, HwptPaging)
            )
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        results = parse_results(inst.console_text())
        # the mappings as counts: keep the log short
        for key in ("before", "after_unplug", "after_follow", "blocked", "end"):
            for d in seen[key]["domains"]:
                d["mappings"] = len(d["mappings"])
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps({"results": results, "seen": seen}, indent=2, default=str) + "\n"
        )
        self.check(results, seen, old_disk, new_disk, old)

    def check(
        self,
        results: list[dict[str, Any]],
        seen: dict[str, Any],
        old_disk: Path,
        new_disk: Path,
        old_id: int,
    ) -> None:
        names = [r["scenario"] for r in results]
        self.assertEqual(names, ["boot", *(s.name for s in SCENARIOS)], json.dumps(results)[:3000])
        boot, probe, rw1, _, unbound, _, rebind, probe2, rw2 = results
        for r in (boot, probe, rw1, unbound, rebind, probe2, rw2):
            self.assertTrue(r["ok"], json.dumps(r)[:3000])

        # 1. I/O through the old device, in its domain
        def ours(q: dict[str, Any], path: str) -> list[dict[str, Any]]:
            return [d for d in q["devices"] if d["device"] == path]

        (was,) = ours(seen["before"], OLD)
        self.assertEqual((was["mode"], was["domain"]), ("domain", seen["old_hwpt"]))
        self.assertEqual(rw1["sha256_read"], rw1["sha256_written"])
        with old_disk.open("rb") as f:
            self.assertEqual(hashlib.sha256(f.read(IO)).hexdigest(), rw1["sha256_written"])

        # 2. the vIOMMU forgot it; the model unbound it and freed its automatic HWPT
        self.assertEqual(ours(seen["after_unplug"], OLD), [])
        (dom,) = seen["after_unplug"]["domains"]
        self.assertEqual((dom["domain"], dom["devices"]), (seen["old_hwpt"], 0))
        self.assertEqual(seen["removed"], [old_id])
        self.assertEqual(seen["after_follow"]["domains"], [])
        self.assertEqual(list(seen["objects_after_unplug"].values()), ["Ioas"])
        self.assertEqual(seen["check_after_unplug"], [])

        # 3. the new device started blocked: its DMA refused, the probe failed
        (was,) = ours(seen["before"], OLD)
        (dev,) = ours(seen["blocked"], NEW)
        self.assertEqual(dev["mode"], "blocked")
        self.assertEqual(dev["requester-id"], was["requester-id"], "not the same slot")
        faults = [f for f in seen["faults_blocked"]["faults"] if f["device"] == NEW]
        self.assertTrue(faults, "no refused DMA from the new device")
        for f in faults:
            self.assertEqual((f["stage"], f["reason"]), ("device", "blocked"))
            self.assertNotIn("domain", f)
        self.assertEqual(len(unbound["pci"]), 1)
        self.assertTrue(unbound["lines"], "no kernel nvme lines")

        # 4. attached by the control plane: the re-probe and the I/O pass
        self.assertEqual(rebind["pci"], unbound["pci"])
        self.assertEqual(seen["check_attached"], [])
        (ctrl,) = probe2["controllers"]
        self.assertEqual((ctrl["serial"], ctrl["pci"]), ("iommulab-hp1", unbound["pci"][0]))
        self.assertEqual(rw2["sha256_read"], rw2["sha256_written"])
        self.assertNotEqual(rw2["sha256_written"], rw1["sha256_written"])
        with new_disk.open("rb") as f:
            self.assertEqual(hashlib.sha256(f.read(IO)).hexdigest(), rw2["sha256_written"])
        self.assertEqual([f for f in seen["faults_end"]["faults"] if f["device"] == NEW], [])
        (dev,) = ours(seen["end"], NEW)
        self.assertEqual((dev["mode"], dev["domain"]), ("domain", seen["new_hwpt"]))
        self.assertEqual(seen["devices_end"], [NEW])
        self.assertEqual(seen["hwpts_end"], [seen["new_hwpt"]])
        self.log.info(
            "new device: %d refused DMA(s) while blocked; probe let go after %ss",
            len(faults),
            unbound["waited_s"],
        )
