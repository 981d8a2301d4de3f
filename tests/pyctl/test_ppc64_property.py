"""Seeded random sequences of PPC64 iommufd operations on the in-memory PEs (no QEMU):
after every step the PEs' TCEs equal the model's and every device translates every
mapped IOVA as its IOAS says (or faults: BLOCKED, another domain live)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from ppc64_ops import random_step

from pyctl.iommufd import DeviceHwInfo, InMemoryBackend, IommufdContext, IommufdError, SpaprPeInfo
from pyctl.iommufd.ppc64_domain import HwptPpc64

DDW = 1 << 59


def backend() -> InMemoryBackend:
    def pe(phb: int) -> SpaprPeInfo:
        return SpaprPeInfo(0, 1 << 30, (12, 16, 24), 2, 1 << 24, 2, phb=phb, dma64_offset=DDW,
                           host_page_shifts=(12, 16), host_max_tces=1 << 16,
                           put_tces_max=100)  # fmt: skip

    return InMemoryBackend(
        [
            DeviceHwInfo(n, "spapr", ias=64, nesting=False, spapr=pe(p))
            for n, p in (("edu0", 0), ("edu1", 1), ("edu2", 1))
        ]
    )


def check_translations(ctx: IommufdContext, be: InMemoryBackend) -> int:
    """Every mapped IOVA of each PE's live domain, as the PE translates it; returns how many."""
    n = 0
    objs = ctx.objects()
    for name in ("edu0", "edu1", "edu2"):
        pe = be.pe_of(name)
        live = [o for o in objs.values() if isinstance(o, HwptPpc64) and o.pe == pe and o.t.live]
        if not live:
            continue
        h = live[0]
        for a in ctx.areas(h.ioas_id):
            n += 1
            t = be.translate(name, a.iova, "read")
            if be.pe_blocked(pe):
                assert (t.allowed, t.reason) == (False, "blocked")
            elif a.read:
                assert t.allowed and t.addr == a.phys, (name, a, t)
            else:
                assert t.reason == "permission", (name, a, t)
    return n


@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_model_equals_in_memory_pes(seed: int) -> None:
    be = backend()
    ctx = IommufdContext(be)
    rng = random.Random(seed)
    st: dict[str, Any] = {
        "devs": [ctx.bind(n) for n in ("edu0", "edu1", "edu2")],
        "ioases": [ctx.ioas_alloc(), ctx.ioas_alloc()],
        "hwpts": [],
    }
    done = checked = 0
    for i in range(150):
        try:
            what = random_step(rng, ctx, st)
            done += 1
        except IommufdError as e:
            assert e.errno != "EIO", f"seed {seed} step {i}: {e}"
            what = f"refused {e.errno}"
        assert ctx.check_hardware() == [], f"seed {seed} step {i} ({what})"
        checked += check_translations(ctx, be)
    assert done > 60 and checked > 100
