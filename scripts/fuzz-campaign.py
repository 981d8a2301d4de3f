#!/usr/bin/env python3
"""The fuzz campaign, longer than the test: random seeds for --seconds N.

Runs campaign runs (tests/fuzz/campaign.py) one after another, alternating
q35 (iommulab-viommu, two edu) and pseries (iommulab-spapr-s2, edu on two
PHBs), each on a fresh QEMU under qtest with a new random seed and up to
--calls steps: schema-driven QMP calls of every x-iommulab-* command, TCE
hypercalls and DDW RTAS calls (pseries), system_resets, then the DMA check.
Prints the calls made, calls per second, and the crashes, hangs, divergences
and client failures found, each with its seed and the command that repeats
it; the steps of each finding go to --out as JSON (--replay FILE runs them
again on a fresh QEMU and says whether QEMU survives them).  Exit status 1
if anything was found.

Usage: scripts/fuzz-campaign.py [--seconds S] [--target q35|pseries|both]
       [--calls N] [--seed N] [--big-answers] [--out DIR] [--replay FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "lib"), str(ROOT / "tests" / "fuzz")]

from campaign import Result, run  # noqa: E402
from fuzzlab import Finding, Step, replay  # noqa: E402
from testvm import ppc64_binary, qemu_binary  # noqa: E402


def binary(target: str) -> Path:
    path = qemu_binary() if target == "q35" else ppc64_binary()
    if path is None:
        sys.exit(f"QEMU for {target} is not built (scripts/build-qemu.sh)")
    return path


def do_replay(path: Path) -> int:
    data = json.loads(path.read_text())
    steps = [Step.from_json(s) for s in data["steps"]]
    print(f"replaying {len(steps)} steps on {data['target']} (seed {data['seed']})")
    n = 0
    try:
        for _step, _out in replay(data["target"], binary(data["target"]), steps):
            n += 1
    except Finding as f:
        print(f"{f.kind.upper()} at step {n + 1}: {f.message}")
        return 1
    print(f"{n} steps, QEMU alive (a divergence needs the full oracle: --seed and --calls)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--target", choices=["q35", "pseries", "both"], default="both")
    ap.add_argument("--calls", type=int, default=5000, help="steps per run (one QEMU)")
    ap.add_argument("--seed", type=int, help="one run with this seed (repeats a finding)")
    ap.add_argument(
        "--big-answers",
        action="store_true",
        help="read-tces of more than 2^19 TCEs at once (the client's line limit)",
    )
    ap.add_argument("--out", type=Path, default=Path("results/fuzz"))
    ap.add_argument("--replay", type=Path, help="run the steps of a finding's JSON file")
    a = ap.parse_args()
    if a.replay:
        return do_replay(a.replay)

    targets = ["q35", "pseries"] if a.target == "both" else [a.target]
    rnd = random.Random()
    start = time.monotonic()
    deadline = start + a.seconds
    results: list[Result] = []
    while not results or (a.seed is None and time.monotonic() < deadline):
        target = targets[len(results) % len(targets)]
        seed = a.seed if a.seed is not None else rnd.randrange(1 << 32)
        limit = None if a.seed is not None else deadline
        res = run(target, binary(target), seed, a.calls, limit, a.big_answers)
        results.append(res)
        print(
            f"{res.target:8} seed {seed:10}: {res.stats.calls:6} calls "
            f"({res.stats.refused} refused, {res.stats.resets} resets) in {res.seconds:5.1f}s"
            + (f"  {res.finding.kind.upper()}" if res.finding else ""),
            flush=True,
        )
        if res.finding:
            a.out.mkdir(parents=True, exist_ok=True)
            path = a.out / f"{target}-{seed}.json"
            res.save(path)
            print(res.report(), f"\nsteps: {path}", sep="\n", flush=True)

    elapsed = time.monotonic() - start
    calls = sum(r.stats.calls for r in results)
    kinds = Counter(r.finding.kind for r in results if r.finding)
    ops: Counter[str] = Counter()
    for r in results:
        ops.update(r.stats.by_op)
    print(
        f"\n{len(results)} runs, {calls} calls in {elapsed:.0f}s ({calls / elapsed:.0f}/s); "
        + ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))
    )
    print(
        f"resets with IOTLB entries to drop: "
        f"{sum(r.stats.resets_with_iotlb for r in results)} of "
        f"{sum(r.stats.resets for r in results)}"
    )
    print(
        "crashes {crash}, hangs {hang}, divergences {divergence}, client failures {client}".format(
            **{k: kinds.get(k, 0) for k in ("crash", "hang", "divergence", "client")}
        )
    )
    return 1 if kinds else 0


if __name__ == "__main__":
    sys.exit(main())
