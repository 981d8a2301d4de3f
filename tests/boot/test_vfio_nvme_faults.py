"""Failure paths of the userspace NVMe driver (guest/vfio-nvme): a stage-2 fault under
its I/O in a pseries guest, and what the binary refuses on the build host itself.
The machines and kernels are those of test_vfio_nvme.py.

Run:  .venv/bin/avocado run --max-parallel-tasks 1 tests/boot/test_vfio_nvme_faults.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from avocado import Test
from stage2_guest import MEMORY_MIB, S2, attach_identity_stage2
from test_vfio_nvme import BOOT_TIMEOUT, VfioNvmeBoot
from vfio_nvme_guest import DISK_BYTES, SERIAL, build_driver, disk_mismatch, vfio, with_driver

from pyctl.guest.results import DONE_PATTERN, cmdline_arg, parse_results
from pyctl.qemu.launcher import LaunchError, QemuInstance, create_raw_disk
from pyctl.qemu.machines import GuestConfig, NvmeDisk, qemu_build_dir

CUT = "cut"
# IOMMULAB-WAIT of the driver's fault hook: the guest-physical runs of its data buffer
CUT_WAIT = rf'IOMMULAB-WAIT \{{"name": "{CUT}", "gpa": "([0-9a-fx+,]*)"\}}'


class VfioNvmeStage2Fault(VfioNvmeBoot):
    """pseries with iommulab's stage 2 beneath the PHB's TCE tables: between the
    driver's write and read phases the host unmaps the stage-2 page(s) under the
    start of its data buffer; the NVMe's reads into them fault in stage 2, and the
    driver must see an error on those commands, and no wrong byte anywhere else.

    :avocado: tags=arch:ppc64le,machine:pseries,vfio-nvme,stage2,failure-paths
    """

    def s2_fault(self, kernel: str) -> None:
        image = self.image("ppc64le", kernel)
        work = Path(self.workdir)
        disk = create_raw_disk(work / "nvme.raw", DISK_BYTES)
        scen = [vfio(iommu="spapr", lba=65536, seed=51, size="1M", bs="64K", qd=4, fault=CUT)]
        cfg = GuestConfig(
            machine="pseries", kernel=image.kernel, initrd=with_driver(image, work),
            append=cmdline_arg(scen, check_known=False),
            nvme=NvmeDisk(disk, serial=SERIAL), memory_mib=MEMORY_MIB, paused=True,
            host_channel=True,
            extra_args=("-device", f"iommulab-spapr-s2,id={S2}", "-action", "shutdown=pause"),
        )  # fmt: skip
        inst = QemuInstance(cfg, Path(self.outputdir) / "qemu", qemu_build_dir())
        try:
            inst.start()
            q = inst.qmp
            attach_identity_stage2(q)
            q.cmd("cont")
            m = inst.wait_for(CUT_WAIT, BOOT_TIMEOUT)
            runs = [tuple(int(x, 16) for x in r.split("+")) for r in m.group(1).split(",")]
            gpa, size = runs[0]  # the first page(s) of the buffer: the first read command's
            cut = q.cmd(
                "x-iommulab-unmap", iommu=S2, domain=1, ranges=[{"iova": gpa, "size": size}]
            )
            self.assertEqual(cut["unmapped"], size)
            inst.tell_guest("go")
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT)
            faults = q.cmd("x-iommulab-query-faults", iommu=S2)["faults"]
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        results = parse_results(inst.console_text())
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps({"results": results, "cut": [gpa, size], "faults": faults}, indent=2)
        )
        (res,) = [r for r in results if r["scenario"] == "vfio-nvme"]
        self.log.info("driver after the cut: %s", json.dumps(res))
        self.log.info("stage-2 faults: %s", json.dumps(faults[:4]))
        # the write phase ran before the cut: the disk has the whole pattern
        self.assertIsNone(disk_mismatch(disk, res["driver"]))
        # the driver saw an error (a status on the commands whose data hit the cut) ...
        self.assertIs(res["ok"], False)
        rep = res["driver"]
        self.assertEqual(rep["stage"], "read")
        # QEMU's NVMe completes a read whose data DMA failed with "unrecovered read error"
        self.assertRegex(rep["error"], r"^read lba \d+ .*status sct 0x2 sc 0x81")
        self.assertGreaterEqual(rep["failed_commands"], 1)
        # ... and every read that completed without error holds the right bytes
        self.assertEqual(rep["mismatched_words"], 0)
        self.assertEqual(rep["bad_commands"], 0)
        # the faults are stage-2 writes (the NVMe's read data) into the cut range
        self.assertTrue(faults, "no stage-2 fault recorded")
        for f in faults:
            self.assertEqual(
                (f["stage"], f["access"], f["reason"]), ("stage2", "write", "not-present")
            )
            self.assertTrue(gpa <= f["iova"] < gpa + size, f)

    def test_debian(self) -> None:
        """Debian kernel, sPAPR TCE v2 container (default window of PHB 0 + DDW).

        :avocado: tags=kernel:debian
        """
        self.s2_fault("debian")

    def test_lab(self) -> None:
        """Lab kernel, the same.

        :avocado: tags=kernel:lab
        """
        self.s2_fault("lab")


class VfioNvmeHostRefusals(Test):  # type: ignore[misc]
    """The x86_64 binary on the build host itself (no guest): arguments and devices it
    must refuse, each with one JSON error line naming the problem, exit status 1.

    :avocado: tags=arch:x86_64,vfio-nvme,failure-paths,fast
    """

    def refuse(self, *args: str) -> dict[str, Any]:
        if os.uname().machine != "x86_64":
            self.cancel("the host is not x86_64")
        out = subprocess.run(
            [str(build_driver("x86_64")), *args], capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        (line,) = out.stdout.splitlines()
        rep: dict[str, Any] = json.loads(line)
        self.assertIs(rep["ok"], False)
        return rep

    def test_arguments(self) -> None:
        for args, stage, text in (
            (("--pci", "x", "--iommu", "vfio"), "args", "--iommu vfio: give iommufd, type1"),
            (("--pci", "x", "--bs", "1000"), "args", "--bs 1000: give a multiple of 512"),
            (("--pci", "x", "--qd", "0"), "args", "--qd 0: give 1..1024"),
            (("--pci", "x", "--size", "3K", "--bs", "2K"), "args", "--size 3072: give a multiple"),
            (("--pci", "x", "--qd", "8x"), "args", "--qd 8x: trailing 'x'"),
            (("--pci", "x", "--timeout-ms", "0"), "args", "--timeout-ms 0: give 1..600000"),
            (("--pci", "x", "--iommu", "type1", "--with", "y"), "args",
             "--with: only with --iommu iommufd"),
            (("--pci", "x", "--with", "y,x"), "args", "--with: x is given twice"),
            (("--pci", "x", "--with", "a,b,c,d"), "args", "--with: at most 3 more functions"),
        ):  # fmt: skip
            rep = self.refuse(*args)
            self.assertEqual(rep["stage"], stage)
            self.assertIn(text, rep["error"])

    def test_devices(self) -> None:
        rep = self.refuse("--pci", "0000:ff:1f.7")
        self.assertEqual(rep["stage"], "device")
        self.assertIn("no PCI device 0000:ff:1f.7", rep["error"])
        self.assertEqual(rep["pci"], "0000:ff:1f.7")
        # any PCI function of the host that is not an NVMe controller
        for dev in sorted(Path("/sys/bus/pci/devices").iterdir()):
            if (dev / "class").read_text().strip() != "0x010802":
                rep = self.refuse("--pci", dev.name)
                self.assertEqual(rep["stage"], "device")
                self.assertIn("not an NVMe controller (0x010802): refusing it", rep["error"])
                break
        else:
            self.cancel("the host has no non-NVMe PCI function to offer")
