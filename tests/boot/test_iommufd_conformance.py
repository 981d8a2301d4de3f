"""The iommufd model against the guest kernel's iommufd: the differential run.

A guest with the lab kernel (CONFIG_IOMMUFD_TEST: the selftest's mock
devices) runs guest/conformance's runner on the host channel; pyctl sends
10,000 generated iommufd calls (IOAS, HWPT paging / nest parent / nested with
the selftest data, mock-device attach / replace / detach, destroy, OPTION,
with invalid ids, flags and ranges mixed in), runs each on its model too and
compares every answer: errno, ids, IOVAs, lengths, ranges.  Any difference
fails the test with the sequence that reproduces it
(``scripts/conformance-soak.py --machine M --replay FILE``).  A runner that
crashes or hangs, or a kernel Oops/WARN/BUG, fails it with the console log,
each batch of calls bounded by ANSWER_TIMEOUT.

The model runs with the kernel's options and the facts the kernel reports
(page and THP sizes, the mock domain's aperture and page size); the
differences the model keeps on purpose are listed in docs/iommufd.md and are
not reached by the generator.

Run:  .venv/bin/avocado run --max-parallel-tasks 1 tests/boot/test_iommufd_conformance.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from avocado import Test

from pyctl.conformance import RunnerFailure, RunStats, differential
from pyctl.conformance.guest import build_runner, guest_session
from pyctl.guest.image import build_image
from pyctl.qemu.machines import MACHINES, qemu_build_dir

OPS = int(os.environ.get("IOMMULAB_CONFORMANCE_OPS", "10000"))
SEED = int(os.environ.get("IOMMULAB_CONFORMANCE_SEED", "1"))
BOOT_TIMEOUT = float(os.environ.get("IOMMULAB_BOOT_TIMEOUT", "300"))
#: one batch of calls (200) must be answered within this
ANSWER_TIMEOUT = 120.0


class IommufdConformance(Test):  # type: ignore[misc]
    """10,000 iommufd calls on the guest kernel and on the model, compared call by call.

    :avocado: tags=lab,iommufd,conformance
    """

    timeout = BOOT_TIMEOUT + 3600

    def run_machine(self, machine: str) -> None:
        binary = qemu_build_dir() / MACHINES[machine].binary
        if not binary.exists():
            self.cancel(f"{binary} not built")
        arch = MACHINES[machine].arch
        try:
            image = build_image(arch, kernel="lab")  # the lab kernel flavour (IOMMUFD_TEST)
        except TypeError:
            self.cancel("this tree's guest images have no lab kernel flavour yet")
        runner = build_runner(arch)
        workdir = Path(self.workdir) / machine
        stats = RunStats()
        t0 = time.monotonic()
        try:
            with guest_session(machine, image, runner, workdir, BOOT_TIMEOUT, ANSWER_TIMEOUT) as (
                session,
                _inst,
            ):
                boot_s = time.monotonic() - t0
                facts = session.facts
                divergence = differential(session, SEED, OPS, stats=stats)
                session.quit()
        except RunnerFailure as exc:
            self._keep(workdir)
            self.fail(f"{machine}: {exc}")
        self._keep(workdir)
        summary = {
            "machine": machine,
            "arch": arch,
            "kernel": image.release,
            "seed": SEED,
            "operations": stats.ops,
            "seconds": round(stats.seconds, 2),
            "seconds_per_10000": round(stats.seconds * 10000 / max(stats.ops, 1), 2),
            "boot_s": round(boot_s, 1),
            "facts": {
                # None: mock devices work; else IOMMU_TEST_OP_MOCK_DOMAIN's errno (pseries
                # and PowerNV: no IOMMU_DMA, so the mock device gets no default domain and
                # no IOMMU; bind is EINVAL)
                "mock_device_errno": facts.mock_errno,
                # the mock driver's 6.19 additions, probed (model.py translates them)
                "mock_paging_data": facts.paging_data,
                "mock_pasid_flag": facts.pasid_flag,
                "selftest_data_len": facts.selftest_data_len,
                "page_size": facts.page_size,
                "thp": facts.hpage_size,
                "mock_page": facts.pgsize,
                "iova_cap": facts.iova_cap,  # 0: two pages or more (HPAGE_SIZE)
                "aperture": [hex(x) for x in facts.aperture],
                "reserved": [[hex(a), hex(b)] for a, b in facts.reserved],
            },
            "answers": stats.errors,
            "documented_differences": stats.known,
            "by_op": stats.by_op,
            "divergence": None if divergence is None else divergence.report(),
        }
        self.log.info("conformance %s", json.dumps(summary, indent=1))
        (Path(self.outputdir) / f"conformance-{machine}.json").write_text(
            json.dumps(summary, indent=1) + "\n"
        )
        if divergence is not None:
            (Path(self.outputdir) / f"divergence-{machine}.txt").write_text(
                "\n".join(op.encode(0).split(" ", 1)[1] for op in divergence.ops) + "\n"
            )
            self.fail(f"{machine}: {divergence.report()}")
        # the run must have reached the kernel's interesting answers, not only refusals
        assert stats.ops == OPS + 1, stats.ops
        ok = stats.errors.get("ok", 0)
        self.assertGreater(ok, OPS // 4, f"only {ok} calls succeeded: {stats.errors}")
        for errno in ("ENOENT", "EINVAL", "EBUSY", "EOPNOTSUPP"):
            self.assertIn(errno, stats.errors, f"no {errno} in {stats.errors}")

    def _keep(self, workdir: Path) -> None:
        console = workdir / "console.log"
        if console.exists():
            dest = Path(self.outputdir) / f"{workdir.name}-console.log"
            dest.write_bytes(console.read_bytes())

    def test_q35(self) -> None:
        self.run_machine("q35")

    def test_pseries(self) -> None:
        self.run_machine("pseries")

    def test_powernv9(self) -> None:
        """PowerNV's host channel is its console (hvc0 through OPAL), shared with the log.

        :avocado: tags=machine:powernv9
        """
        self.run_machine("powernv9")
