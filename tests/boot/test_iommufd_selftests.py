"""The kernel's own iommufd selftests in the lab's guests: pseries, PowerNV and q35.

tools/testing/selftests/iommu (``iommufd`` and ``iommufd_fail_nth``) of the
lab kernel's source, built static for the guest (guest/selftests/build.sh),
run by the agent's ``iommufd-selftests`` scenario in a guest booted with the
lab kernel (IOMMUFD_TEST's mock domain; no device behind the vIOMMU is
involved).  Each test logs the TAP counts (pass, fail, skip) per program and
fails on

- any failure not in KNOWN_FAILURES (each entry says why it is expected),
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
from pathlib import Path
from typing import Any

from avocado import Test

from pyctl.guest.image import build_image
from pyctl.guest.results import Scenario
from pyctl.guest.runner import AgentRun, guest_config, run_agent
from pyctl.qemu.machines import MACHINES, qemu_build_dir

#: seconds each selftest program may run in the guest before the agent kills it
PROGRAM_TIMEOUT = int(os.environ.get("IOMMULAB_SELFTEST_TIMEOUT", "900"))
#: the whole guest run: boot, both programs, power-off
RUN_TIMEOUT = float(2 * PROGRAM_TIMEOUT + 300)
PROGRAMS = ("iommufd", "iommufd_fail_nth")

#: failures expected on every machine, with the reason; the key is the TAP test name
KNOWN_FAILURES: dict[str, str] = {}


def tap_counts(result: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{program: {pass, fail, skip, xfail, planned}} from the scenario's result."""
    keys = ("pass", "fail", "skip", "xfail", "planned")
    return {p["name"]: {k: int(p[k]) for k in keys} for p in result["programs"]}


def unexpected_failures(result: dict[str, Any]) -> list[str]:
    """``program: test`` for every failed test not in KNOWN_FAILURES."""
    return [
        f"{p['name']}: {name}"
        for p in result["programs"]
        for name in p["failed"]
        if name not in KNOWN_FAILURES
    ]


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
        for p in result["programs"]:
            for name in p["failed"]:
                if name in KNOWN_FAILURES:
                    self.log.info("known failure %s: %s", name, KNOWN_FAILURES[name])
        if result["kernel_splats"]:
            fail(f"kernel warnings during the selftests: {result['kernel_splats']}")
        if bad := incomplete(result):
            fail(f"selftests did not run to completion: {bad}")
        if bad := unexpected_failures(result):
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
