"""One campaign run: a fresh machine, a seeded stream of calls, the DMA check.

``run(target, seed, calls)`` interleaves the schema-driven QMP fuzzer with
(on pseries) the hypercall/RTAS fuzzer and ``system_reset`` s, then runs the
DMA check.  Everything random comes from ``random.Random(seed)`` and QEMU
under qtest is deterministic, so ``run`` with the same target, seed and
calls repeats a finding; its steps are also written out for
:func:`fuzzlab.replay` (``scripts/fuzz-campaign.py --replay FILE``).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from dmacheck import dma_check
from fuzzlab import Finding, Lab, Stats
from qmpfuzz import QmpFuzzer
from spaprfuzz import SpaprFuzzer

RESET_EVERY = 60  # one system_reset in about this many QMP fuzz steps


@dataclass
class Result:
    target: str
    seed: int
    stats: Stats
    seconds: float
    finding: Finding | None = None
    big_answers: bool = False
    steps: list[dict[str, object]] = field(default_factory=list)

    def report(self, tail: int = 12) -> str:
        if self.finding is None:
            return f"{self.target} seed {self.seed}: {self.stats.calls} calls, no finding"
        lines = [
            f"{self.finding.kind.upper()} on {self.target}, seed {self.seed}, at call "
            f"{len(self.steps)}: {self.finding.message}",
            f"reproduce: scripts/fuzz-campaign.py --target {self.target} --seed {self.seed} "
            f"--calls {len(self.steps)}" + (" --big-answers" if self.big_answers else ""),
            f"last {min(tail, len(self.steps))} of {len(self.steps)} steps:",
        ]
        lines += [json.dumps(s)[:400] for s in self.steps[-tail:]]
        return "\n".join(lines)

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps({"target": self.target, "seed": self.seed, "steps": self.steps}, indent=0)
        )


def run(
    target: str,
    binary: Path,
    seed: int,
    calls: int,
    deadline: float | None = None,
    big_answers: bool = False,
) -> Result:
    """Up to ``calls`` steps (or until ``deadline``, a time.monotonic()), then the DMA check."""
    rnd = random.Random(seed)
    t0 = time.monotonic()
    lab = Lab(target, binary)
    res = Result(target, seed, lab.stats, 0.0, big_answers=big_answers)
    try:
        policy = None
        if lab.phbs:
            policy = {k: v for k, v in lab.phbs[0]["policy"].items() if k != "table-memory"}
        qf = QmpFuzzer(lab, rnd, RESET_EVERY, big_answers)
        sf = SpaprFuzzer(lab, rnd) if target == "pseries" else None
        while lab.stats.calls < calls and (deadline is None or time.monotonic() < deadline):
            (sf if sf is not None and rnd.random() < 0.5 else qf).step()
        dma_check(lab, policy)
    except Finding as f:
        res.finding = f
    finally:
        res.steps = [s.to_json() for s in lab.steps]
        res.seconds = time.monotonic() - t0
        lab.close()
    return res
