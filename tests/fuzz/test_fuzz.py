"""The bounded fuzz campaign of the default test run (fixed seeds, ~1 minute).

Each case is one campaign run (tests/fuzz/campaign.py): a fresh q35 or
pseries under qtest, a seeded stream of schema-driven QMP calls (pseries:
and TCE hypercalls and DDW RTAS calls) with system_resets among them, then
edu DMA through a domain programmed at the end.  Zero findings is the bar;
a failure prints the seed, the command that reproduces it and the last
steps.  Longer runs with random seeds: scripts/fuzz-campaign.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from campaign import run
from fuzzlab import Finding, Lab, Step
from qmpfuzz import QmpFuzzer
from testvm import ppc64_binary, qemu_binary

CASES = [("q35", 11, 9000), ("q35", 12, 9000), ("pseries", 21, 7000), ("pseries", 22, 7000)]


def binary(target: str) -> Path:
    path = qemu_binary() if target == "q35" else ppc64_binary()
    if path is None:
        pytest.skip(f"QEMU for {target} not built (scripts/build-qemu.sh)")
    return path


@pytest.mark.parametrize(("target", "seed", "calls"), CASES)
def test_campaign(target: str, seed: int, calls: int) -> None:
    res = run(target, binary(target), seed, calls)
    assert res.finding is None, res.report()
    assert res.stats.calls >= calls
    # the stream reached the commands that change state, and resets happened
    accepted = {k for k, (ok, _) in res.stats.by_name.items() if ok}
    want = {
        "qmp x-iommulab-domain-alloc",
        "qmp x-iommulab-map",
        "qmp x-iommulab-attach",
        "qmp x-iommulab-unmap",
        "reset",
    }
    if target == "pseries":
        want |= {"hcall 0x20", "hcall 0x13c", "hcall 0x138", "rtas ibm,create-pe-dma-window"}
    assert want <= accepted, sorted(want - accepted)
    # some resets had IOTLB entries to drop (the reset check is not vacuous)
    assert res.stats.resets_with_iotlb > 0


def test_oracle_sees_a_refusal_that_changed_state() -> None:
    """The oracle is not blind: a state change next to a refusal is a divergence."""
    lab = Lab("q35", binary("q35"))
    try:
        fz = QmpFuzzer(lab, random.Random(1))
        lab.snap = lab.snapshot()
        lab.qmp("x-iommulab-domain-alloc", iommu="viommu0", domain=77, type="paging")
        fz.next_call = lambda: ("x-iommulab-domain-free", {"iommu": "viommu0", "domain": 78})
        with pytest.raises(Finding, match=r"divergence.*domain-free.*changed the state"):
            fz.step()
        bad = Step("qmp", "x-iommulab-query", {"iommu": "viommu0", "x": 1})
        out = lab.run(bad)
        assert not out.ok and out.error_class == "GenericError" and out.error
    finally:
        lab.close()


def test_oracle_sees_a_dead_qemu() -> None:
    """QEMU killed between two steps: the next step is a crash finding with QEMU's output."""
    lab = Lab("q35", binary("q35"))
    try:
        assert lab.vm.proc is not None
        lab.vm.proc.kill()
        with pytest.raises(Finding, match=r"crash: QEMU died at .*x-iommulab-query"):
            lab.run(Step("qmp", "x-iommulab-query", {"iommu": "viommu0"}))
    finally:
        lab.close()
