#!/usr/bin/env python3
"""Soak the iommufd model against the guest kernel: seed after seed for a while.

One guest with the lab kernel (or the loopback runner with --loopback, no
guest) runs the differential of pyctl.conformance with seeds START, START+1,
... (--ops calls each, every seed on a fresh /dev/iommu context) until
--seconds pass.  Prints calls, calls/s and every divergence with its seed;
each divergence's sequence goes to --out/divergence-<machine>-<seed>.txt and
is replayed with --replay FILE.  Exit status 1 if anything diverged or the
runner failed.

    scripts/conformance-soak.py --machine q35 --seconds 600
    scripts/conformance-soak.py --machine pseries --replay results/divergence-pseries-7.txt
    scripts/conformance-soak.py --loopback --seconds 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyctl.conformance import (
    Divergence,
    Op,
    RunnerFailure,
    RunStats,
    Session,
    compare,
    differential,
)
from pyctl.conformance.loopback import LoopbackRunner, parse_request


def read_replay(path: Path) -> list[Op]:
    ops = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            ops.append(parse_request(f"{n:x} {line}")[1])
    return ops


def soak(session: Session, args: argparse.Namespace, out: Path, name: str) -> int:
    stats = RunStats()
    if args.replay:
        d = compare(session, read_replay(args.replay), stats=stats)
        print(f"replay of {args.replay}: {stats.ops} calls")
        if d:
            print(d.report())
        return 1 if d else 0
    found: list[Divergence] = []
    seed = args.seed
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        d = differential(session, seed, args.ops, stats=stats)
        if d is not None:
            found.append(d)
            f = out / f"divergence-{name}-{seed}.txt"
            f.write_text("\n".join(op.encode(0).split(" ", 1)[1] for op in d.ops) + "\n")
            print(d.report(), flush=True)
            print(f"  saved: {f} (replay: --replay {f})", flush=True)
        seed += 1
    rate = stats.ops / stats.seconds if stats.seconds else 0.0
    print(
        f"{name}: seeds {args.seed}..{seed - 1}, {stats.ops} calls in {stats.seconds:.1f} s "
        f"({rate:.0f} calls/s), {len(found)} divergences; documented differences "
        f"{stats.known}; answers {stats.errors}"
    )
    return 1 if found else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machine", choices=("q35", "pseries", "powernv9", "powernv10"))
    ap.add_argument("--loopback", action="store_true", help="no guest: the model answers")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--ops", type=int, default=10000, help="calls per seed")
    ap.add_argument("--seed", type=int, default=1, help="first seed")
    ap.add_argument("--replay", type=Path, help="run this saved sequence instead")
    ap.add_argument("--out", type=Path, default=Path("results/conformance"))
    args = ap.parse_args()
    if not args.loopback and not args.machine:
        ap.error("give --machine or --loopback")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.loopback:
        return soak(Session(LoopbackRunner()), args, args.out, "loopback")

    from pyctl.conformance.guest import build_runner, guest_session
    from pyctl.guest.image import build_image
    from pyctl.qemu.machines import MACHINES

    arch = MACHINES[args.machine].arch
    image = build_image(arch, kernel="lab")
    runner = build_runner(arch)
    workdir = Path(tempfile.mkdtemp(prefix=f"conformance-{args.machine}-", dir=args.out))
    try:
        with guest_session(args.machine, image, runner, workdir) as (session, _inst):
            rc = soak(session, args, args.out, args.machine)
            session.quit()
            return rc
    except RunnerFailure as exc:
        print(f"runner failure: {exc}\nconsole: {workdir / 'console.log'}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
