"""The kernel's own iommufd selftests in the lab's guests: pseries, PowerNV and q35.

tools/testing/selftests/iommu (``iommufd`` and ``iommufd_fail_nth``) of the
lab kernel's source, built static for the guest (guest/selftests/build.sh),
run by the agent's ``iommufd-selftests`` scenario in a guest booted with the
lab kernel (IOMMUFD_TEST's mock domain; no device behind the vIOMMU is
involved).  Each test logs the TAP counts (pass, fail, skip) per program and
fails on

- any failure not in KNOWN_FAILURES (each entry says why it is expected) or, on
  POWER, not caused by the mock device that the kernel cannot give an IOMMU there
  (_NO_MOCK_IOMMU: its kselftest diagnostic names the mock-domain call, or it is one
  of the few listed),
- a program that did not run to its end (killed at its time bound, crashed),
- a kernel WARNING, BUG or Oops logged meanwhile, a panic or a hung guest
  (the run is bounded by RUN_TIMEOUT); the console log is attached to the
  failure message and kept in the test's output directory.

The lab kernel is built first if it is missing (scripts/build-kernel.sh,
minutes on a fresh machine; CI builds it in its set-up step).

Run:  .venv/bin/avocado run --max-parallel-tasks 1 tests/boot/test_iommufd_selftests.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from avocado import Test

from pyctl.guest.image import build_image
from pyctl.guest.results import Scenario
from pyctl.guest.runner import AgentRun, guest_config, run_agent
from pyctl.qemu.machines import MACHINES, qemu_build_dir

#: seconds each selftest program may run in the guest before the agent kills it
PROGRAM_TIMEOUT = int(os.environ.get("IOMMULAB_SELFTEST_TIMEOUT", "300"))
#: the whole guest run: boot, both programs, power-off
RUN_TIMEOUT = float(2 * PROGRAM_TIMEOUT + 300)
PROGRAMS = ("iommufd", "iommufd_fail_nth")

#: failures expected on every machine, with the reason; the key is the TAP test name.
#: None on Linux 6.19.11: q35 passes every test.  (On 6.12.107 the stable series'
#: backport of the 6.17 selftest failed get_hw_info in three variants.)
KNOWN_FAILURES: dict[str, str] = {}

#: POWER: the selftest's mock device never gets the mock IOMMU.  From 6.19 the mock
#: device's fwspec names the mock IOMMU itself (iommu_mock_device_add()), so its
#: probe reaches mock_ops; but iommu_setup_default_domain() then fails: powerpc has
#: no CONFIG_IOMMU_DMA (def_bool ARM64 || X86 || S390), so
#: iommu_get_default_domain_type() asks for an IDENTITY default domain, while
#: mock_ops' default_domain is its BLOCKED domain, and
#: iommu_group_alloc_default_domain() refuses the mismatch (EINVAL,
#: drivers/iommu/iommu.c).  The probe fails, the device has no IOMMU, and
#: iommufd_device_bind() refuses it (no IOMMU_CAP_CACHE_COHERENCY: EINVAL), so
#: IOMMU_TEST_OP_MOCK_DOMAIN fails and every test that creates a mock device fails
#: where it does: a limitation of the mock IOMMU on a kernel without IOMMU_DMA, not
#: a fault of the lab's emulation (the mock device never reaches the hardware).
_NO_MOCK_IOMMU = "POWER: the mock device gets no IOMMU (no IOMMU_DMA: no default domain)"
#: the diagnostic (kselftest's "Expected ... ==" line) of such a failure
MOCK_DEVICE_DIAG = re.compile(r"== _test_cmd_mock_domain\w*\(")
#: failures of the same cause whose diagnostic does not name the mock domain call:
#: they expect another errno from a mock-domain call and get EINVAL
_NO_MOCK_IOMMU_ERRNO = {
    "iommufd_ioas.no_domain.fork_gone": "expects EFAULT from mock domain creation, gets EINVAL",
    "iommufd_ioas.no_domain.hwpt_attach": "expects ENOENT from mock domain creation, gets EINVAL",
    **{
        f"basic_fail_nth.{t}": "its first step creates a mock domain, before any fault is injected"
        for t in (
            "device",
            "access_pin_domain",
            "map_two_domains",
            "map_file_domain",
            "map_domain",
        )
    },
}


#: a guest without any huge page size (the agent reports Hugepagesize 0): QEMU's
#: PowerNV device tree has no ibm,processor-radix-AP-encodings, so the radix MMU
#: knows only 4K and 64K pages (pseries lists 2M and 1G too): no hugetlbfs pages
#: and no THP, and these tests need MAP_HUGETLB or a THP-aligned buffer.  They are
#: excused only when the agent reports no huge page size.
_NO_HUGEPAGES = "the machine has no huge page size (QEMU PowerNV: no radix AP encodings)"
NO_HUGEPAGE_FAILURES: dict[str, str] = {
    "iommufd_ioas.no_domain.access_domain_destory": "mmap(MAP_HUGETLB) fails",
    "iommufd_ioas.no_domain.area_auto_iova": "the buffer is not 2M-aligned: IOVAs follow it",
    **{
        f"iommufd_dirty_tracking.domain_dirty{size}_huge.{t}": "set-up mmap(MAP_HUGETLB) fails"
        for size in ("64M", "128M")
        for t in (
            "get_dirty_bitmap_no_clear",
            "get_dirty_bitmap",
            "device_dirty_capability",
            "set_dirty_tracking",
            "enforce_dirty",
        )
    },
}


def known_failures(arch: str, hugepage_kib: int = 2048) -> dict[str, str]:
    """The named known failures of ``arch`` (POWER adds the pattern MOCK_DEVICE_DIAG) on a
    guest whose huge page size is ``hugepage_kib`` (0: none)."""
    out = dict(KNOWN_FAILURES)
    if arch == "ppc64le":
        out |= {n: f"{_NO_MOCK_IOMMU}: {why}" for n, why in _NO_MOCK_IOMMU_ERRNO.items()}
    if hugepage_kib == 0:
        out |= {n: f"{_NO_HUGEPAGES}: {why}" for n, why in NO_HUGEPAGE_FAILURES.items()}
    return out


def failure_diagnostics(console: str, program: str) -> dict[str, str]:
    """{failed test: its first kselftest diagnostic line} from ``program``'s TAP on the console."""
    m = re.search(
        rf"^IOMMULAB-TAP-BEGIN {program}$(.*?)^IOMMULAB-TAP-END {program}$",
        console,
        re.MULTILINE | re.DOTALL,
    )
    out: dict[str, str] = {}
    diag: list[str] = []
    for line in (m.group(1) if m else "").splitlines():
        if line.startswith("#  RUN"):
            diag = []
        elif line.startswith("# "):
            diag.append(line)
        elif line.startswith("not ok "):
            parts = line.split()
            hits = [d for d in diag if "Expected" in d or "Assertion" in d]
            out[parts[3] if len(parts) > 3 else line] = hits[0] if hits else ""
    return out


def tap_counts(result: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{program: {pass, fail, skip, xfail, planned}} from the scenario's result."""
    keys = ("pass", "fail", "skip", "xfail", "planned")
    return {p["name"]: {k: int(p[k]) for k in keys} for p in result["programs"]}


def unexpected_failures(
    result: dict[str, Any], known: dict[str, str], console: str, arch: str
) -> list[str]:
    """``program: test (diagnostic)`` for every failed test not known for ``arch``."""
    out = []
    for p in result["programs"]:
        diags = failure_diagnostics(console, p["name"])
        for name in p["failed"]:
            diag = diags.get(name, "")
            if name in known or (arch == "ppc64le" and MOCK_DEVICE_DIAG.search(diag)):
                continue
            out.append(f"{p['name']}: {name} ({diag or 'no diagnostic'})")
    return out


def incomplete(result: dict[str, Any]) -> list[str]:
    """Programs that did not run to the end of their plan (killed, crashed, no plan)."""
    out = []
    for p in result["programs"]:
        ran = p["pass"] + p["fail"] + p["skip"] + p["xfail"]
        if p["planned"] == 0 or ran != p["planned"] or p["exit_status"] not in (0, 1):
            out.append(
                f"{p['name']}: {ran} of {p['planned']} tests reported, exit status "
                f"{p['exit_status']} after {p['seconds']} s"
            )
    return out


class IommufdSelftests(Test):
    """:avocado: tags=selftests,lab-kernel"""

    timeout = RUN_TIMEOUT + 900  # plus building the lab kernel and image if needed

    def run_selftests(self, machine: str) -> None:
        build = qemu_build_dir()
        binary = build / MACHINES[machine].binary
        if not binary.exists():
            self.error(f"{binary} missing: run scripts/build-qemu.sh (or set IOMMULAB_QEMU_BUILD)")
        image = build_image(MACHINES[machine].arch, kernel="lab", log=True)
        scenario = Scenario("iommufd-selftests", {"timeout": str(PROGRAM_TIMEOUT)})
        cfg = guest_config(machine, image, [scenario], memory_mib=2048)
        run = run_agent(cfg, Path(self.outputdir) / "qemu", timeout=RUN_TIMEOUT, build_dir=build)
        console = run.console.read_text(errors="replace") if run.console.exists() else ""
        summary = {
            "machine": machine,
            "kernel": image.release,
            "seconds_to_boot": run.seconds_to_boot,
            "seconds_to_done": run.seconds_to_done,
            "error": run.error,
            "results": run.results,
        }
        (Path(self.outputdir) / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.check(machine, run, console)

    def check(self, machine: str, run: AgentRun, console: str) -> None:
        def fail(why: str) -> None:
            self.fail(f"{machine}: {why}\n--- console log {run.console} ---\n{console[-20000:]}")

        if run.error is not None:
            fail(f"guest run failed: {run.error}")
        try:
            result = run.result("iommufd-selftests")
        except KeyError:
            fail("the agent printed no iommufd-selftests result")
            return
        if "programs" not in result:
            fail(f"the scenario failed: {result.get('error')}")
        self.assertEqual([p["name"] for p in result["programs"]], list(PROGRAMS))
        for name, c in tap_counts(result).items():
            self.log.info(
                "%s %s: pass %d fail %d skip %d xfail %d of %d",
                machine,
                name,
                c["pass"],
                c["fail"],
                c["skip"],
                c["xfail"],
                c["planned"],
            )
        arch = MACHINES[machine].arch
        known = known_failures(arch, int(result["hugepages"]["size_kib"]))
        self.log.info("%s hugetlb: %s", machine, result["hugepages"])
        for p in result["programs"]:
            for name in p["failed"]:
                if name in known:
                    self.log.info("known failure %s: %s", name, known[name])
        if result["kernel_splats"]:
            fail(f"kernel warnings during the selftests: {result['kernel_splats']}")
        if bad := incomplete(result):
            fail(f"selftests did not run to completion: {bad}")
        if bad := unexpected_failures(result, known, console, arch):
            fail(f"unexpected selftest failures: {bad}")

    def test_pseries(self) -> None:
        """:avocado: tags=machine:pseries"""
        self.run_selftests("pseries")

    def test_powernv(self) -> None:
        """:avocado: tags=machine:powernv9"""
        self.run_selftests("powernv9")

    def test_q35(self) -> None:
        """:avocado: tags=machine:q35"""
        self.run_selftests("q35")
