"""Boot tests of the userspace NVMe driver (guest/vfio-nvme) inside the guests.

Each test boots a guest whose NVMe is taken from the kernel's nvme driver and
given to vfio-pci by the agent's ``vfio-nvme`` scenario; the driver brings the
controller up with its own queues, writes a pattern and reads it back, and
reports.  The host then checks the disk file's bytes where the pattern went.
Where the guest's kernel nvme driver also ran (``nvme-rw`` before the unbind),
the log and results.json give the driver's throughput against it, same run.

Kernels: ``debian`` (the Debian 6.12 image plus vfio modules: legacy containers
only, no iommufd), ``lab`` and ``rfc`` (issue 14's lab kernels; ``rfc`` =
ppc64le with guest/kernel-patches/ppc64-iommufd-rfc).  A test whose kernel is
not built is cancelled, saying so.

Run:  .venv/bin/avocado run --max-parallel-tasks 1 tests/boot/test_vfio_nvme.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avocado import Test
from vfio_nvme_guest import (
    DISK_BYTES,
    SERIAL,
    debian_image,
    disk_mismatch,
    lab_image,
    pseries_second_phb,
    pseries_two_on_second_phb,
    q35_intel_iommu,
    vfio,
    with_driver,
)

from pyctl.guest.image import GuestImage
from pyctl.guest.results import Scenario, cmdline_arg
from pyctl.guest.runner import AgentRun, run_agent
from pyctl.qemu.launcher import FATAL_PATTERNS, create_raw_disk
from pyctl.qemu.machines import GuestConfig, NvmeDisk, qemu_build_dir
from pyctl.qemu.qmp import QmpSession

# Bounded: a hung driver or guest fails the test within this.
BOOT_TIMEOUT = float(os.environ.get("IOMMULAB_BOOT_TIMEOUT", "300"))
MIB = 1 << 20


class VfioNvmeBoot(Test):  # type: ignore[misc]
    """Shared steps.

    :avocado: disable
    """

    timeout = BOOT_TIMEOUT + 120

    def image(self, arch: str, kernel: str) -> GuestImage:
        if kernel == "debian":
            return debian_image(arch)
        image, why = lab_image(arch, kernel)
        if image is None:
            self.cancel(why)
        return image

    def run_guest(
        self,
        machine: str,
        kernel: str,
        scenarios: list[Scenario],
        extra: Any,
        append: str = "",
        machine_nvme: bool = False,
        inspect: Callable[[QmpSession], Any] | None = None,
        **cfg: Any,
    ) -> tuple[AgentRun, Path]:
        """Boot with the driver in the initramfs; ``extra(disk)`` gives the NVMe's args, or
        with ``machine_nvme`` the machine's own NVMe placement has the disk; ``inspect``:
        run_agent's, the host's look at QEMU once the agent is done."""
        arch = "x86_64" if machine == "q35" else "ppc64le"
        image = self.image(arch, kernel)
        work = Path(self.workdir)
        disk = create_raw_disk(work / "nvme.raw", DISK_BYTES)
        fatal = FATAL_PATTERNS
        if kernel == "rfc":
            # an RFC oops is fatal (the kernel stops there); the end of its trace ends the
            # run at once instead of a stopped guest waiting out the timeout
            append = f"{append} panic_on_oops=1".strip()
            fatal = (*fatal, r"---\[ end trace [0-9a-f]+ \]---")
        line = " ".join(x for x in (cmdline_arg(scenarios, check_known=False), append) if x)
        config = GuestConfig(
            machine=machine, kernel=image.kernel, initrd=with_driver(image, work),
            append=line, extra_args=tuple(extra(disk)),
            nvme=NvmeDisk(disk, serial=SERIAL) if machine_nvme else None, **cfg,
        )  # fmt: skip
        run = run_agent(
            config,
            Path(self.outputdir) / "qemu",
            BOOT_TIMEOUT,
            qemu_build_dir(),
            inspect=inspect,
            fatal=fatal,
        )
        (Path(self.outputdir) / "results.json").write_text(
            json.dumps({"machine": machine, "kernel": kernel, "error": run.error,
                        "results": run.results}, indent=2) + "\n"
        )  # fmt: skip
        self.log.info("console log: %s", run.console)
        if run.error is not None:
            oops = [x for x in run.console.read_text(errors="replace").splitlines()
                    if "NIP [" in x or "Kernel NULL pointer" in x]  # fmt: skip
            if kernel == "rfc" and oops:
                self.cancel(f"expected failure: the RFC oopses here: {' / '.join(oops[:2])}")
            self.fail(f"guest run failed: {run.error} (console: {run.console})")
        if run.done is None:
            self.fail(f"the agent printed no DONE line (console: {run.console})")
        return run, disk

    def drivers(self, run: AgentRun) -> list[dict[str, Any]]:
        return [r for r in run.results if r["scenario"] == "vfio-nvme"]

    def check_ok(
        self, result: dict[str, Any], disk: Path, iommu: str, serial: str = SERIAL
    ) -> dict[str, Any]:
        """A driver run that passed: its report, the bytes on the disk file."""
        if result.get("ok") is not True:
            self.fail(f"vfio-nvme ({iommu}) failed: {json.dumps(result)}")
        rep: dict[str, Any] = result["driver"]
        self.assertEqual(rep["iommu"], iommu)
        self.assertEqual(rep["serial"], serial)
        self.assertEqual(rep["verified_bytes"], rep["size"])
        self.assertEqual(rep["mismatched_words"], 0)
        self.assertEqual(rep["failed_commands"], 0)
        self.assertEqual(rep["commands"], rep["size"] // rep["bs"])
        self.assertIsNone(disk_mismatch(disk, rep))
        self.log.info(
            "vfio-nvme %s bs=%d qd=%d: write %s MiB/s %s IOPS, read %s MiB/s %s IOPS (%s)",
            iommu, rep["bs"], rep["qd"], rep["write_mibs"], rep["write_iops"],
            rep["read_mibs"], rep["read_iops"], rep["dma"],
        )  # fmt: skip
        return rep

    def compare(self, run: AgentRun, rep: dict[str, Any], label: str) -> dict[str, Any]:
        """The driver's MiB/s over the kernel nvme driver's (nvme-rw, same guest, same run)."""
        kern = run.result("nvme-rw")
        if kern.get("ok") is not True:
            self.fail(f"the kernel nvme driver's nvme-rw failed: {json.dumps(kern)}")
        ratio = {
            "label": label,
            "kernel_write_mibs": kern["write_mibs"],
            "kernel_read_mibs": kern["read_mibs"],
            "driver_write_mibs": rep["write_mibs"],
            "driver_read_mibs": rep["read_mibs"],
            "write_ratio": round(rep["write_mibs"] / kern["write_mibs"], 2),
            "read_ratio": round(rep["read_mibs"] / kern["read_mibs"], 2),
        }
        self.log.info("throughput, vfio-nvme / kernel nvme: %s", json.dumps(ratio))
        with (Path(self.outputdir) / "throughput.json").open("a") as f:
            f.write(json.dumps(ratio) + "\n")
        return ratio

    def second_window(self, run: AgentRun, disk: Path) -> None:
        """Cancelled while the RFC's only aperture is the default window: the fixed map at
        1 << 59 refused because it is outside the IOAS's one range; any other failure fails."""
        (res,) = self.drivers(run)
        err = str(res.get("error", ""))
        if (
            res.get("ok") is not True
            and res["driver"].get("stage") == "map"
            and f"at {hex(1 << 59)}" in err
            and err.endswith("ranges 0x0-0x40000000)")
        ):
            self.cancel(
                "expected failure (RFC: the domain's aperture is the 1 GiB default window "
                f"only, no 64-bit window at 1 << 59): {err}"
            )
        self.check_ok(res, disk, "iommufd")


# POWER has no MSI isolation in the kernel's sense (arch_is_isolated_msi() is false), so
# iommufd refuses to bind a device without this (the legacy sPAPR container does not ask).
UNSAFE_MSI = "iommufd.allow_unsafe_interrupts=1"
# The kernel driver's run and the driver's runs that compare with it: dd with 1 MiB blocks
# goes out as 512 KiB commands (QEMU's NVMe MDTS), two at a time; the driver does the same.
KERNEL_RW = Scenario("nvme-rw", {"size": "16M"})
SEQ = {"bs": "512K", "qd": 2, "size": "16M"}


class VfioNvmeQ35(VfioNvmeBoot):
    """q35, the NVMe behind QEMU's intel-iommu.

    :avocado: tags=arch:x86_64,machine:q35,vfio-nvme
    """

    def test_lab_iommufd_and_type1(self) -> None:
        """Lab kernel: iommufd cdev, then iommufd's type1 container, against the kernel's nvme.

        :avocado: tags=kernel:lab
        """
        run, disk = self.run_guest(
            "q35", "lab",
            [
                KERNEL_RW,
                vfio(bind="no"),  # still the nvme driver's: refused, nothing touched
                vfio(iommu="iommufd", lba=65536, seed=11, **SEQ),
                vfio(iommu="iommufd", lba=131072, seed=12, size="4M", bs="4K", qd=8),
                vfio(iommu="type1", lba=196608, seed=13, **SEQ),
            ],
            q35_intel_iommu, append="intel_iommu=on",
        )  # fmt: skip
        refused, fd_seq, fd_4k, t1 = self.drivers(run)
        self.assertIs(refused["ok"], False)
        self.assertIn("bound to the kernel driver 'nvme'", refused["error"])
        rep = self.check_ok(fd_seq, disk, "iommufd")
        self.assertRegex(rep["dma"], r"^devid \d+ ioas \d+ hwpt \d+ ranges")
        self.check_ok(fd_4k, disk, "iommufd")
        self.check_ok(t1, disk, "type1")
        self.compare(run, rep, "q35 intel-iommu, iommufd, 512K x qd2 vs dd 1M")

    def test_debian_type1_no_cdev(self) -> None:
        """Debian kernel (no IOMMUFD): a device the nvme driver holds is refused; iommufd
        mode ends with an error line naming the missing cdev, not a hang; the legacy type1
        container works.

        :avocado: tags=kernel:debian
        """
        run, disk = self.run_guest(
            "q35", "debian",
            [KERNEL_RW, vfio(bind="no", iommu="type1"), vfio(iommu="iommufd"),
             vfio(iommu="type1", lba=65536, seed=21, **SEQ)],
            q35_intel_iommu, append="intel_iommu=on",
        )  # fmt: skip
        refused, no_cdev, t1 = self.drivers(run)
        self.assertIs(refused["ok"], False)
        self.assertEqual(refused["driver"]["stage"], "device")
        self.assertIn("bound to the kernel driver 'nvme'", refused["error"])
        self.assertIs(no_cdev["ok"], False)
        self.assertEqual(no_cdev["driver"]["stage"], "cdev")
        self.assertIn("no VFIO device cdev", no_cdev["error"])
        rep = self.check_ok(t1, disk, "type1")
        self.assertIn("type1v2", rep["dma"])
        self.compare(run, rep, "q35 intel-iommu, legacy type1 (Debian), 512K x qd2 vs dd 1M")


class VfioNvmePseries(VfioNvmeBoot):
    """pseries: the sPAPR TCE v2 container with a DDW, and iommufd with the RFC.

    :avocado: tags=arch:ppc64le,machine:pseries,vfio-nvme
    """

    def spapr_ddw(self, kernel: str) -> None:
        run, disk = self.run_guest(
            "pseries", kernel,
            [KERNEL_RW, vfio(iommu="spapr", lba=65536, seed=31, **SEQ), Scenario("dmesg-iommu")],
            lambda d: pseries_second_phb(d, ddw=True),
        )  # fmt: skip
        (ddw,) = self.drivers(run)
        rep = self.check_ok(ddw, disk, "spapr")
        # the buffers are in the dynamic window the driver created (at 1 << 59 on pseries)
        self.assertRegex(rep["dma"], r"ddw 0x800000000000000\+")
        self.assertGreaterEqual(rep["data_iova"], 1 << 59)
        self.compare(run, rep, f"pseries {kernel}, sPAPR TCE v2 + DDW, 512K x qd2 vs dd 1M")

    def test_lab_spapr_ddw(self) -> None:
        """Lab kernel (no RFC): the legacy sPAPR TCE v2 container with a DDW.

        :avocado: tags=kernel:lab
        """
        self.spapr_ddw("lab")

    def test_debian_spapr_ddw(self) -> None:
        """Debian kernel: the same, with Debian's vfio_iommu_spapr_tce module.

        :avocado: tags=kernel:debian
        """
        self.spapr_ddw("debian")

    def test_rfc_iommufd_default_window(self) -> None:
        """RFC kernel, the RFC's own set-up: the NVMe on a second PHB with ddw=off, the
        driver through iommufd in the 1 GiB default window.

        :avocado: tags=kernel:rfc
        """
        run, disk = self.run_guest(
            "pseries", "rfc",
            [KERNEL_RW, vfio(iommu="iommufd", lba=65536, seed=41, **SEQ),
             vfio(iommu="iommufd", lba=131072, seed=42, size="4M", bs="4K", qd=8)],
            lambda d: pseries_second_phb(d, ddw=False), append=UNSAFE_MSI,
        )  # fmt: skip
        seq, small = self.drivers(run)
        rep = self.check_ok(seq, disk, "iommufd")
        # the RFC's domain: one aperture, the default window [0, 1 GiB]
        self.assertRegex(rep["dma"], r"ranges 0x0-0x40000000$")
        self.assertLess(rep["data_iova"] + rep["size"], 1 << 30)
        self.check_ok(small, disk, "iommufd")
        self.compare(run, rep, "pseries rfc, iommufd 1 GiB window, 512K x qd2 vs dd 1M")

    def test_rfc_iommufd_default_window_vfio_only(self) -> None:
        """RFC kernel, ddw=off, the NVMe never given to the kernel's nvme driver (its
        initcall blacklisted): the device goes straight to vfio-pci, as a host device the
        guest passes on would.  The same oops as with the kernel driver first, from
        another refusal of pseries' create_table (no ibm,ddw-applicable instead of the
        failed-DDW list the kernel driver's DMA set-up leaves: docs/vfio-nvme.md).
        Cancelled quoting the oops while the RFC has it.

        :avocado: tags=kernel:rfc,rfc-limits
        """
        run, disk = self.run_guest(
            "pseries", "rfc",
            [vfio(iommu="iommufd", lba=65536, seed=47, **SEQ)],
            lambda d: pseries_second_phb(d, ddw=False),
            append=f"{UNSAFE_MSI} initcall_blacklist=nvme_init",
        )  # fmt: skip
        (res,) = self.drivers(run)
        rep = self.check_ok(res, disk, "iommufd")
        self.assertRegex(rep["dma"], r"ranges 0x0-0x40000000$")

    def test_rfc_iommufd_ddw_on(self) -> None:
        """RFC kernel, the NVMe alone on PHB 1 with ddw=on: iommufd in the default window
        (pseries recreates window 0 through the DDW reset path).

        :avocado: tags=kernel:rfc
        """
        run, disk = self.run_guest(
            "pseries", "rfc", [KERNEL_RW, vfio(iommu="iommufd", lba=65536, seed=46, **SEQ)],
            lambda d: pseries_second_phb(d, ddw=True), append=UNSAFE_MSI,
        )  # fmt: skip
        (res,) = self.drivers(run)
        rep = self.check_ok(res, disk, "iommufd")
        self.assertRegex(rep["dma"], r"ranges 0x0-0x40000000$")
        self.compare(run, rep, "pseries rfc ddw=on, iommufd 1 GiB window, 512K x qd2 vs dd 1M")

    def test_rfc_iommufd_two_devices(self) -> None:
        """Two NVMe functions on PHB 1 (one PE, one group), both given to vfio-pci, the
        driver through iommufd on one, then on the other.  The RFC's domain keeps a
        single device and its free leaves the window's table set ("REVISIT" in the
        patch): if the second device's run fails, the test is cancelled quoting it, as
        the RFC's single-device limit; a version that handles it turns this green.

        :avocado: tags=kernel:rfc,rfc-limits
        """
        run, disk = self.run_guest(
            "pseries", "rfc",
            [vfio(iommu="iommufd", nth=0, also="all", lba=65536, seed=44, size="4M"),
             vfio(iommu="iommufd", nth=1, lba=65536, seed=45, size="4M")],
            lambda d: pseries_two_on_second_phb(d, create_raw_disk(d.parent / "nvme2.raw",
                                                                   DISK_BYTES)),
            append=UNSAFE_MSI,
        )  # fmt: skip
        first, second = self.drivers(run)
        self.check_ok(first, disk, "iommufd")
        if second.get("ok") is not True:
            self.cancel(f"expected failure (RFC: one device per domain): {second['error']}")
        self.check_ok(second, disk.parent / "nvme2.raw", "iommufd", serial=f"{SERIAL}-2")

    def test_rfc_iommufd_second_window(self) -> None:
        """Expected to fail with the RFC as posted: its domain has only the default
        window (aperture 0..1 GiB); a mapping in the 64-bit window (1 << 59) is refused.
        A version of the patch that exposes the second DMA window turns this green.

        :avocado: tags=kernel:rfc,rfc-limits
        """
        run, disk = self.run_guest(
            "pseries", "rfc", [vfio(iommu="iommufd", iova=hex(1 << 59), seed=43, size="1M")],
            lambda d: pseries_second_phb(d, ddw=True), append=UNSAFE_MSI,
        )  # fmt: skip
        self.second_window(run, disk)


class VfioNvmePowernv(VfioNvmeBoot):
    """PowerNV (PHB4/PHB5 IODA TCE tables, OPAL): the RFC's iommufd path on bare metal POWER.

    Upstream QEMU's PowerNV device tree has no ``ibm,processor-radix-AP-encodings``, so the
    guest's radix MMU had no huge page size (HPAGE_SIZE 1) and iommufd refused every
    kernel-chosen IOVA with EINVAL.  The lab's QEMU patch 0020 adds them (checked here: the
    guest registers 2 MiB HugeTLB pages); the RFC flavour's 0003 fixes iommufd's side.

    :avocado: tags=arch:ppc64le,vfio-nvme,kernel:rfc
    """

    def run_rfc(self, machine: str, seed: int) -> None:
        run, disk = self.run_guest(
            machine, "rfc",
            [KERNEL_RW, vfio(iommu="iommufd", lba=65536, seed=seed, **SEQ)],
            lambda d: [], machine_nvme=True, append=UNSAFE_MSI,
        )  # fmt: skip
        (res,) = self.drivers(run)
        if res.get("ok") is not True and "IOMMU_IOAS_MAP" in res.get("error", ""):
            self.fail(
                f"{res['error']}: on PowerNV this is iommufd's IOVA alignment cap at HPAGE_SIZE "
                "(1 without huge pages); the RFC kernel must carry guest/kernel-patches/"
                "ppc64-iommufd-rfc/0003-*.patch (rebuild: its build.sh ppc64le)"
            )
        rep = self.check_ok(res, disk, "iommufd")
        self.assertIn(
            "HugeTLB: registered 2.00 MiB page size", run.console.read_text(errors="replace"),
            "the PowerNV guest has no huge page size: QEMU without hw/qemu-patches/0020?",
        )  # fmt: skip
        self.assertRegex(rep["dma"], r"ranges 0x0-0x40000000$")
        # the kernel chose both IOVAs, inside the RFC's 1 GiB default window
        self.assertLess(rep["data_iova"] + rep["size"], 1 << 30)
        self.compare(run, rep, f"{machine} rfc, iommufd 1 GiB window, 512K x qd2 vs dd 1M")

    def test_rfc_iommufd(self) -> None:
        """PowerNV10 (PHB5), RFC kernel: iommufd in the 1 GiB default window the RFC's domain
        creates, kernel-chosen IOVAs.

        :avocado: tags=machine:powernv10
        """
        self.run_rfc("powernv10", 61)

    def test_rfc_iommufd_powernv9(self) -> None:
        """PowerNV9 (PHB4), RFC kernel: the same.

        :avocado: tags=machine:powernv9
        """
        self.run_rfc("powernv9", 62)

    def test_rfc_iommufd_second_window(self) -> None:
        """Expected to fail with the RFC as posted: on PowerNV the PE's second TVE (bus
        address bit 59, the kernel's bypass / 64-bit window) is not in the RFC's domain
        (aperture 0..1 GiB); a fixed map at 1 << 59 is refused.  Green when a version of
        the patch exposes it.

        :avocado: tags=machine:powernv10,rfc-limits
        """
        run, disk = self.run_guest(
            "powernv10", "rfc", [vfio(iommu="iommufd", iova=hex(1 << 59), seed=63, size="1M")],
            lambda d: [], machine_nvme=True, append=UNSAFE_MSI,
        )  # fmt: skip
        self.second_window(run, disk)
