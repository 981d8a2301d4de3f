#!/usr/bin/env python3
"""Control-plane kill points, longer than the test: map-ram killed, then recovered.

Each case starts a fresh paused q35 (tests/lib/testvm.ViommuVm), runs
``iommulab map-ram`` through tests/lib/killpoint.py with SIGKILL after its Nth
QMP command, and then recovers with the documented commands (``map-ram``
again, ``orphans --reclaim``).  ``--double`` cases kill the recovering
``map-ram`` (or the reclaim) too, at a random command of its own, before the
final recovery.  After each case the device must hold what an uninterrupted
run leaves (domains' mappings and the devices' modes, domain ids aside), have
no orphan, answer ``map-ram`` with "nothing to do", translate sample GPAs to
themselves, and QEMU must still run.

Prints the cases, the QMP commands the killed runs sent, crashes (QEMU gone),
hangs (a run over --hang seconds) and divergences; exit status 1 if any.
Usage: scripts/kill-sweep.py [--mem MIB] [--batch SIZE] [--double N] [--seconds S] [--seed N]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "lib")]

from testvm import ViommuVm  # noqa: E402

from pyctl import cli  # noqa: E402
from pyctl.iommufd.backend import HwState  # noqa: E402
from pyctl.iommufd.qmp_backend import QmpBackend  # noqa: E402

KILLPOINT = ROOT / "tests" / "lib" / "killpoint.py"


@dataclass
class Findings:
    cases: int = 0
    commands: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    divergences: list[str] = field(default_factory=list)

    def total(self) -> int:
        return len(self.crashes) + len(self.hangs) + len(self.divergences)


def shape(state: HwState) -> tuple[object, ...]:
    """The state without domain ids (a resumed run allocates other ones)."""
    doms = {d.domain: d for d in state.domains}
    return (
        sorted((d.type, d.ias, d.devices, d.children, d.mappings) for d in state.domains),
        [
            (dv.device, dv.mode, doms[dv.domain].mappings if dv.domain is not None else None)
            for dv in state.devices
        ],
    )


def killed(sock: str, argv: list[str], after: int | None, log: Path | None, hang: float) -> int:
    """Run the CLI through the kill hook; its return code (-9 when killed)."""
    env = dict(os.environ)
    if after is not None:
        env["IOMMULAB_KILL_AFTER"] = str(after)
    if log is not None:
        env["IOMMULAB_QMP_LOG"] = str(log)
    res = subprocess.run(
        [sys.executable, str(KILLPOINT), "--qmp", sock, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=hang,
        check=False,
    )
    return res.returncode


def cli_run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        rc = cli.main(argv, out)
    finally:
        sys.stderr = old
    return rc, out.getvalue() + err.getvalue()


class Sweep:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.map_ram = ["map-ram", "edu0", "--batch", args.batch]
        self.found = Findings()
        self.ref: tuple[object, ...] = ()
        self.steps = 0

    def vm(self) -> ViommuVm:
        return ViommuVm(devices=2, mem_mib=self.args.mem)

    def reference(self) -> None:
        log = self.workdir / "ref.log"
        with self.vm() as vm:
            rc = killed(str(vm.qmp_path), self.map_ram, None, log, self.args.hang)
            if rc != 0:
                raise SystemExit(f"the uninterrupted map-ram failed ({rc})")
            with QmpBackend(str(vm.qmp_path)) as hw:
                self.ref = shape(hw.query())
        self.steps = len(log.read_text().split())

    def case(self, name: str, kills: list[tuple[list[str], int]]) -> None:
        """Run the killed commands in turn, then recover and check."""
        self.found.cases += 1
        log = self.workdir / "case.log"
        log.unlink(missing_ok=True)
        with self.vm() as vm:
            sock = str(vm.qmp_path)
            try:
                for argv, after in kills:
                    killed(sock, argv, after, log, self.args.hang)
                self.found.commands += len(log.read_text().split()) if log.exists() else 0
                if not vm.running():
                    self.found.crashes.append(f"{name}: QEMU exited ({vm.log_tail()})")
                    return
                self.recover(name, sock)
            except subprocess.TimeoutExpired as e:
                self.found.hangs.append(f"{name}: {e.cmd[-3:]} over {e.timeout}s")
            if not vm.running():
                self.found.crashes.append(f"{name}: QEMU exited ({vm.log_tail()})")

    def recover(self, name: str, sock: str) -> None:
        bad = self.found.divergences
        rc, text = cli_run(["--qmp", sock, *self.map_ram])
        if rc != 0:
            bad.append(f"{name}: map-ram after the kill: {text.strip()}")
            return
        rc, text = cli_run(["--qmp", sock, "orphans", "--reclaim"])
        if rc != 0:
            bad.append(f"{name}: orphans --reclaim: {text.strip()}")
        rc, text = cli_run(["--qmp", sock, "orphans"])
        if rc != 0 or text != "no orphan domains\n":
            bad.append(f"{name}: orphans left: {text.strip()}")
        rc, text = cli_run(["--qmp", sock, *self.map_ram])
        if rc != 0 or not text.startswith("nothing to do"):
            bad.append(f"{name}: a further map-ram did something: {text.strip()}")
        with QmpBackend(sock) as hw:
            if shape(hw.query()) != self.ref:
                bad.append(f"{name}: state differs from an uninterrupted run: {hw.query()}")
            top = self.args.mem << 20
            for gpa in (0x1000, 0x100000, top // 2, top - 4096):
                t = hw.translate("edu0", gpa, "write")
                if not (t.allowed and t.addr == gpa):
                    bad.append(f"{name}: GPA {gpa:#x} translates to {t}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mem", type=int, default=1024, help="guest RAM in MiB (default 1024)")
    ap.add_argument("--batch", default="16M", help="map-ram --batch (default 16M)")
    ap.add_argument("--double", type=int, default=20, help="cases killing the recovery too")
    ap.add_argument("--seconds", type=float, default=0, help="then random double kills until")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hang", type=float, default=120, help="a run longer than this hangs")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kill-sweep-") as tmp:
        s = Sweep(args, Path(tmp))
        s.reference()
        print(f"map-ram of {args.mem} MiB in {args.batch} batches: {s.steps} QMP commands")
        for n in range(1, s.steps + 1):
            s.case(f"kill@{n}", [(s.map_ram, n)])
        print(f"single kills: {s.found.cases} cases, {s.found.total()} findings")

        def double() -> None:
            a = rnd.randint(1, s.steps)
            second = ["orphans", "--reclaim"] if rnd.random() < 0.25 else s.map_ram
            b = rnd.randint(1, 8 if second[0] == "orphans" else s.steps)
            s.case(f"kill@{a}+{second[0]}@{b}", [(s.map_ram, a), (second, b)])

        for _ in range(args.double):
            double()
        while time.monotonic() - t0 < args.seconds:
            double()
    f = s.found
    print(
        f"cases {f.cases}, QMP commands before the kills {f.commands}, crashes "
        f"{len(f.crashes)}, hangs {len(f.hangs)}, divergences {len(f.divergences)}, "
        f"{time.monotonic() - t0:.1f} s"
    )
    for line in f.crashes + f.hangs + f.divergences:
        print("  " + line)
    return 1 if f.total() else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
