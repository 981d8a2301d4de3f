"""Boot test: a pseries guest's windows and the host side's PPC64 iommufd domains coexist.

The guest (TCG) has an NVMe on PHB 0 and one on PHB 1 and writes and reads
back a pattern on both (its own DDWs, its own TCEs).  While it does, the
host side drives PHB 2 (an ``edu`` the guest has no driver for) through the
iommufd model over QMP: HWPT_ALLOC with a DMA window, IOAS maps (bulk
TCEs), a second window added and removed on the live domain, BLOCKED and
back, every step's TCEs read back equal to the model's.  At the end the
guest's I/O is intact, the guest's windows (owner ``guest``) show up in the
model as those PEs' windows, and PHB 2 holds exactly the model's windows.

Not driven: DMA by the edu on PHB 2 (without qtest nothing can start it
while a guest runs; tests/device/test_ppc64_iommufd_qtest.py does that).

Run:  .venv/bin/avocado run tests/boot/test_spapr_iommufd.py
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from avocado import Test

from pyctl.guest.image import build_image
from pyctl.guest.results import BOOT_PATTERN, DONE_PATTERN, Scenario, cmdline_arg, parse_results
from pyctl.iommufd import IommufdContext
from pyctl.iommufd.ppc64 import IOMMU_HWPT_DATA_PPC64_DMA_WINDOW as PPC64_WIN
from pyctl.iommufd.ppc64 import Ppc64DmaWindow
from pyctl.iommufd.spapr_qmp import SpaprQmpBackend
from pyctl.qemu.launcher import LaunchError, QemuInstance, create_raw_disk
from pyctl.qemu.machines import GuestConfig, NvmeDisk, qemu_build_dir

DISK_BYTES = 128 << 20
BOOT_TIMEOUT = float(os.environ.get("IOMMULAB_BOOT_TIMEOUT", "240"))
SCENARIOS = [
    Scenario("nvme-probe"),
    Scenario("nvme-rw", {"size": "32M", "dev": "nvme0n1"}),
    Scenario("nvme-rw", {"size": "32M", "dev": "nvme1n1", "wait": "30"}),
]
DDW = 1 << 59
RW_FIXED = 7


class SpaprIommufdCoexist(Test):  # type: ignore[misc]
    """Guest DDWs on two PHBs, host PPC64 domains on a third.

    :avocado: tags=arch:ppc64le,machine:pseries,spapr,iommufd
    """

    timeout = BOOT_TIMEOUT + 180

    def host_round(self, ctx: IommufdContext, dev: int, ioas: int, i: int) -> int:
        """One round of the host side on PHB 2; returns the TCEs written."""
        h = ctx.hwpt_alloc(dev, ioas, 0, PPC64_WIN, Ppc64DmaWindow(1 << 26, 12))
        ctx.attach(dev, h)
        base = 0x2000000 + (i % 8) * 0x100000
        ctx.ioas_map(ioas, base, 0x100000, RW_FIXED, iova=0x100000)
        ctx.hwpt_window_add(h, Ppc64DmaWindow(1 << 28, 16))
        ctx.ioas_map(ioas, base, 0x40000, RW_FIXED, iova=DDW + 0x40000)
        problems = ctx.check_tces()
        if problems:
            self.fail(f"round {i}: {problems}")
        ctx.detach(dev)  # BLOCKED
        ctx.attach(dev, h)
        if ctx.check_tces():
            self.fail(f"round {i} after BLOCKED: {ctx.check_tces()}")
        ctx.ioas_unmap(ioas, DDW + 0x40000, 0x40000)
        ctx.hwpt_window_remove(h, DDW)
        ctx.ioas_unmap(ioas, 0x100000, 0x100000)
        ctx.detach(dev)
        ctx.destroy(h)
        return (0x100000 >> 12) * 2 + (0x40000 >> 16) * 2

    def test_guest_and_host_windows_coexist(self) -> None:
        build = qemu_build_dir()
        image = build_image("ppc64le")
        workdir = Path(self.outputdir) / "qemu"
        disk0 = create_raw_disk(Path(self.workdir) / "nvme0.raw", DISK_BYTES)
        disk1 = create_raw_disk(Path(self.workdir) / "nvme1.raw", DISK_BYTES)
        cfg = GuestConfig(
            machine="pseries",
            kernel=image.kernel,
            initrd=image.initrd,
            append=cmdline_arg(SCENARIOS),
            nvme=NvmeDisk(disk0, serial="iommulab-nvme0"),
            memory_mib=1024,
            paused=True,
            extra_args=(
                "-action", "shutdown=pause",
                "-device", "spapr-pci-host-bridge,index=1,id=phb1",
                "-drive", f"file={disk1},if=none,id=nvme1-drive,format=raw",
                "-device", "nvme,id=nvme1,drive=nvme1-drive,serial=iommulab-nvme1,bus=phb1.0",
                "-device", "spapr-pci-host-bridge,index=2,id=phb2",
                "-device", "edu,id=edu2,bus=phb2.0,dma_mask=0xffffffffffffffff",
            ),
        )  # fmt: skip
        inst = QemuInstance(cfg, workdir, build)
        rounds = tces = 0
        seen: dict[str, Any] = {}
        try:
            inst.start()
            be = SpaprQmpBackend(inst.qmp)  # listens to the guest's window events from here
            ctx = IommufdContext(be)
            n0, n1, e2 = ctx.bind("nvme0"), ctx.bind("nvme1"), ctx.bind("edu2")
            ioas = ctx.ioas_alloc()
            inst.qmp.cmd("cont")
            inst.wait_for(BOOT_PATTERN, BOOT_TIMEOUT)
            deadline = time.monotonic() + BOOT_TIMEOUT
            while not re.search(DONE_PATTERN, inst.console_text(), re.MULTILINE):
                if time.monotonic() > deadline:
                    self.fail(f"no DONE line (console: {inst.console_path})")
                tces += self.host_round(ctx, e2, ioas, rounds)
                rounds += 1
            inst.wait_for(DONE_PATTERN, BOOT_TIMEOUT)
            ctx.process_window_events()
            seen = {
                "nvme0": [(w.start, w.page_shift, w.owner) for w in ctx.pe_windows(n0)],
                "nvme1": [(w.start, w.page_shift, w.owner) for w in ctx.pe_windows(n1)],
            }
            # the host side keeps one domain on PHB 2 at the end
            h = ctx.hwpt_alloc(e2, ioas, 0, PPC64_WIN, Ppc64DmaWindow(1 << 26, 12))
            ctx.attach(e2, h)
            ctx.ioas_map(ioas, 0x2000000, 0x10000, RW_FIXED, iova=0x10000)
            phb2 = [(w.start, w.size, w.owner) for w in be.pe_windows(2)]
            problems = ctx.check_tces()
        except LaunchError as exc:
            self.fail(f"guest run failed: {exc} (console: {inst.console_path})")
        finally:
            inst.shutdown()
        results = parse_results(inst.console_text())
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps({"results": results, "rounds": rounds, "windows": seen}, indent=2) + "\n"
        )
        failed = [r for r in results if r.get("ok") is not True]
        self.assertEqual(failed, [], f"console: {inst.console_path}")
        rws = [r for r in results if r["scenario"] == "nvme-rw"]
        self.assertEqual(len(rws), 2)
        for r in rws:
            self.assertEqual(r["sha256_read"], r["sha256_written"])
        self.log.info("host rounds on PHB 2 during the guest's I/O: %d (%d TCEs)", rounds, tces)
        self.assertGreater(rounds, 0, "the host side ran while the guest did I/O")
        # the guest's own DDWs on PHB 0 and 1 are in the model, owned by the guest
        for name in ("nvme0", "nvme1"):
            self.assertIn((DDW, 24, "guest"), seen[name], f"{name}: {seen[name]}")
        self.assertEqual(phb2, [(0, 1 << 26, "host")])
        self.assertEqual(problems, [])
