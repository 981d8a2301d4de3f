"""Several NVMe functions in one iommufd domain at once (guest/vfio-nvme ``--with``).

The driver binds every function to one iommufd, attaches the first to an IOAS (the
kernel allocates the HWPT) and the others to that same HWPT, i.e. one iommu_domain
for all; then every function writes its pattern and reads it back at the same time
(a thread each).  The host checks each disk file.

- q35 + intel-iommu, lab kernel: two functions in two IOMMU groups share a domain
  (the reference: what the kernel's iommufd does on x86);
- pseries, RFC kernel, two functions of one PE (PHB 1): one group, one domain;
- pseries, RFC kernel, one function on PHB 1 and one on PHB 2 (two PEs, two groups)
  in one domain: expected to fail with the RFC as posted, whose domain is built for
  the PE of the device it is allocated for ("REVISIT: Single device for now") and
  whose attach_dev does not program the domain's table into another PE ("REVISIT:
  Check table group, list handling").  A version that handles several PEs per
  domain turns it green.

Run:  .venv/bin/avocado run --max-parallel-tasks 1 tests/boot/test_vfio_nvme_one_domain.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from test_vfio_nvme import UNSAFE_MSI, VfioNvmeBoot
from vfio_nvme_guest import (
    DISK_BYTES,
    SERIAL,
    disk_mismatch,
    powernv_second_phb,
    pseries_two_on_second_phb,
    pseries_two_phbs,
    q35_intel_iommu_two,
    vfio,
)

from pyctl.qemu.launcher import create_raw_disk
from pyctl.qemu.qmp import QmpSession

HWPT = re.compile(r"^devid (\d+) ioas (\d+) hwpt (\d+)( \(joined\))? ranges")
# every function: 4 MiB in 64 KiB commands, 4 in flight, from the same LBA of its own disk
SHARED = {"with": "all", "lba": 65536, "size": "4M", "bs": "64K", "qd": 4}


class VfioNvmeOneDomain(VfioNvmeBoot):
    """Two functions, one iommufd HWPT, DMA at once.

    :avocado: tags=vfio-nvme,one-domain
    """

    def two(self, machine: str, kernel: str, topology: Any, seed: int, **kw: Any) -> Any:
        """Boot with two NVMe (``topology(disk, disk2)``, or with ``machine_nvme``
        ``topology(disk2)`` beside the machine's own), run the driver over both."""

        def extra(d: Path) -> list[str]:
            disk2 = create_raw_disk(d.parent / "nvme2.raw", DISK_BYTES)
            return topology(disk2) if kw.get("machine_nvme") else topology(d, disk2)

        run, disk = self.run_guest(
            machine, kernel, [vfio(iommu="iommufd", seed=seed, **SHARED)], extra, **kw
        )
        (res,) = self.drivers(run)
        self.last_run = run
        return res, disk, disk.parent / "nvme2.raw"

    def check_shared(self, res: dict[str, Any], disk: Path, disk2: Path) -> None:
        """Both functions' bytes came back and are on their disks; one HWPT for both."""
        rep = self.check_ok(res, disk, "iommufd")
        (peer,) = rep["peers"]
        self.assertIs(peer["ok"], True, peer)
        self.assertEqual(peer["serial"], f"{SERIAL}-2")
        self.assertEqual(peer["verified_bytes"], rep["size"])
        self.assertEqual((peer["mismatched_words"], peer["failed_commands"]), (0, 0))
        # the peer wrote the same pattern at the same LBA, on its own disk
        self.assertIsNone(disk_mismatch(disk2, {**rep, **peer}))
        first, second = HWPT.match(rep["dma"]), HWPT.match(peer["dma"])
        assert first is not None and second is not None, (rep["dma"], peer["dma"])
        self.assertIsNone(first.group(4))
        self.assertEqual(second.group(4), " (joined)")
        self.assertNotEqual(first.group(1), second.group(1))  # two iommufd devices ...
        self.assertEqual(first.group(2, 3), second.group(2, 3))  # ... one IOAS, one HWPT
        # their buffers do not overlap in the one IOVA space
        spans = sorted((r["data_iova"], r["data_iova"] + rep["size"]) for r in (rep, peer))
        self.assertLessEqual(spans[0][1], spans[1][0])

    def test_q35_lab(self) -> None:
        """q35 + intel-iommu, lab kernel: two groups in one domain, the reference.

        :avocado: tags=arch:x86_64,machine:q35,kernel:lab
        """
        res, disk, disk2 = self.two("q35", "lab", q35_intel_iommu_two, 71, append="intel_iommu=on")
        self.check_shared(res, disk, disk2)

    def test_pseries_rfc_one_pe(self) -> None:
        """pseries, RFC kernel: two functions of PHB 1's PE (one group) in one domain,
        DMA at once through the RFC's table in the PE's default window.

        :avocado: tags=arch:ppc64le,machine:pseries,kernel:rfc
        """
        res, disk, disk2 = self.two(
            "pseries", "rfc", pseries_two_on_second_phb, 72, append=UNSAFE_MSI, inspect=tce_faults
        )
        self.check_shared(res, disk, disk2)
        self.assertEqual(self.last_run.inspected, [])  # no DMA refused anywhere

    def test_pseries_rfc_two_pes(self) -> None:
        """pseries, RFC kernel: functions on PHB 1 and PHB 2 (two PEs) in one domain.

        Expected to fail with the RFC as posted (see the module's docstring): the
        second PE's DMA does not reach the domain's TCE table.  Cancelled, quoting the
        driver, when the second function is the one that fails; any other outcome but
        success fails the test.

        :avocado: tags=arch:ppc64le,machine:pseries,kernel:rfc,rfc-limits
        """

        res, disk, disk2 = self.two(
            "pseries", "rfc", pseries_two_phbs, 73, append=UNSAFE_MSI, inspect=tce_faults
        )
        faults: list[dict[str, Any]] = self.last_run.inspected
        self.log.info("TCE faults: %s", json.dumps(faults))
        drv = res.get("driver", {})
        if res.get("ok") is not True and drv.get("pci", "").startswith("0002:"):
            # what the RFC does: PHB 2's function reads its admin queue through PHB 2's
            # own (empty) default window; the lab saw that read and nothing else
            self.assertEqual(drv["stage"], "admin", drv)
            self.assertRegex(drv["error"], r"fatal status \(CSTS 0x\d+\)")
            self.assertTrue(faults, "the lab recorded no refused DMA")
            self.assertEqual({(f["phb"], f["stage"], f["reason"]) for f in faults},
                             {(2, "tce", "not-present")})  # fmt: skip
            self.assertTrue(all(f["iova"] < 1 << 30 for f in faults), faults)
            first = faults[0]
            self.cancel(
                "expected failure (RFC: a domain's TCE table is set only in the PE it was "
                "allocated for; attach_dev of another PE's device succeeds without "
                f"programming it): {drv['pci']}: {drv['error']}; the lab: {first['access']} "
                f"at IOVA {hex(first['iova'])} refused ({first['reason']}) in PHB "
                f"{first['phb']}'s window liobn {hex(first['liobn'])}"
            )
        self.check_shared(res, disk, disk2)
        self.assertEqual(faults, [])

    def test_powernv10_rfc_two_pes(self) -> None:
        """PowerNV10, RFC kernel: functions behind PHB 0 and PHB 1 (two PEs) in one domain.

        Expected to fail like pseries: the RFC sets the domain's table in the first
        PE's TVE only.  Cancelled, quoting the driver, when the function behind PHB 1
        is the one that fails; any other outcome but success fails the test.

        :avocado: tags=arch:ppc64le,machine:powernv10,kernel:rfc,rfc-limits
        """
        res, disk, disk2 = self.two(
            "powernv10", "rfc", powernv_second_phb, 74, machine_nvme=True, append=UNSAFE_MSI
        )
        drv = res.get("driver", {})
        self.log.info("driver: %s", json.dumps(res))
        if res.get("ok") is not True and drv.get("pci", "").startswith("0001:"):
            self.assertEqual(drv["stage"], "admin", drv)
            self.cancel(
                "expected failure (RFC: a domain's TCE table is set only in the PE it was "
                f"allocated for): {drv['pci']}: {drv['error']}"
            )
        self.check_shared(res, disk, disk2)


def tce_faults(q: QmpSession) -> list[dict[str, Any]]:
    """The lab's view once the driver is done: every DMA a PHB's TCE windows refused."""
    faults: list[dict[str, Any]] = q.cmd("x-iommulab-query-faults")["faults"]
    return faults
