"""The end of every campaign run: edu DMA through a domain the fuzzer programs now.

Whatever the stream left behind, a new paging domain with a known mapping
must carry edu's DMA there (the bytes land) and refuse it elsewhere (the
canary stays).  q35: edu0 behind ``iommulab-viommu``.  pseries: edu0 on PHB
0, a TCE in the default window (re-made by a window reset under the
initial DDW policy), then stage 2 (``s2``) in the new domain.  The set-up
commands are recorded steps, so a failing check replays like any finding.
"""

from __future__ import annotations

import json
from typing import Any

from fuzzlab import EDU_BUF, Finding, Lab, Step, free_domain

from pyctl.qemu.pseries_qtest import H_PUT_TCE, LIOBN0

PAGE = 0x1000
SRC, DST = 0x5000000, 0x5001000  # guest physical pages
IOVA = 0x7000000  # q35: where the domain maps SRC, DST; IOVA + 2 pages is unmapped
OUT = 0x6000000  # pseries: where stage 2 sends SRC..DST+4K


def _qmp(lab: Lab, name: str, **args: Any) -> Any:
    out = lab.run(Step("qmp", name, args))
    if not out.ok:
        raise Finding("divergence", f"DMA check: {name} {json.dumps(args)} refused: {out.error}")
    return out.value


def dma_check(lab: Lab, policy: dict[str, Any] | None = None) -> None:
    """Raise a Finding unless bytes land through the new domain and nowhere else."""
    lab.release_owners()
    state = lab.lab_state()
    dom = free_domain([d["domain"] for d in state["domains"]])
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(64))
    canary = b"\x5a" * 64
    _qmp(lab, "x-iommulab-domain-alloc", iommu=lab.iommu, domain=dom, type="paging")
    if lab.target == "q35":
        src_bus, dst_bus, bad_bus = IOVA, IOVA + PAGE, IOVA + 2 * PAGE
        maps = [{"iova": IOVA, "size": 2 * PAGE, "addr": SRC, "read": True, "write": True}]
        land, guard = DST, bad_bus
        lab.write(SRC, pattern)
        lab.write(bad_bus, canary)  # where an untranslated DMA would land
        _qmp(lab, "x-iommulab-map", iommu=lab.iommu, domain=dom, mappings=maps)
        _qmp(lab, "x-iommulab-attach", iommu=lab.iommu, device="edu0", mode="domain", domain=dom)
    else:
        if policy is not None:
            _qmp(lab, "x-iommulab-spapr-set-ddw-policy", phb=0, **policy)
        _qmp(lab, "x-iommulab-spapr-set-blocked", phb=0, blocked=False)  # the stream may block
        _qmp(lab, "x-iommulab-spapr-window-reset", phb=0)
        src_bus, dst_bus, bad_bus = 0x10000, 0x11000, 0x12000
        for bus, gpa in ((src_bus, SRC), (dst_bus, DST)):
            if lab.hcall(H_PUT_TCE, LIOBN0, bus, gpa | 3).value[0] != 0:
                raise Finding("divergence", f"DMA check: H_PUT_TCE {bus:#x} -> {gpa:#x} failed")
        lab.hcall(H_PUT_TCE, LIOBN0, bad_bus, 0)
        maps = [{"iova": SRC, "size": 2 * PAGE, "addr": OUT, "read": True, "write": True}]
        land, guard = OUT + PAGE, DST
        lab.write(OUT, pattern)
        lab.write(DST, canary)  # the IPA: DMA that skipped stage 2 would land here
        _qmp(lab, "x-iommulab-map", iommu="s2", domain=dom, mappings=maps)
        _qmp(lab, "x-iommulab-attach", iommu="s2", device="s2", mode="domain", domain=dom)
    lab.write(land, bytes(64))
    lab.dma(src_bus, EDU_BUF, to_memory=False)  # edu reads SRC (OUT on pseries)
    lab.dma(EDU_BUF, dst_bus, to_memory=True)  # and writes it to DST (OUT + 4K)
    lab.dma(EDU_BUF, bad_bus, to_memory=True)  # refused: nothing mapped there
    qt = lab.vm.qt
    if qt.memread(land, 64) != pattern:
        raise Finding("divergence", f"DMA check: edu's bytes did not land at {land:#x}")
    if qt.memread(guard, 64) != canary:
        raise Finding("divergence", f"DMA check: the canary at {guard:#x} was overwritten")
    lab.check_alive()
