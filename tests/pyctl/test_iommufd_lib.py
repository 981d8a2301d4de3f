"""Shared helpers for the iommufd model tests (no tests here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pyctl.iommufd import DeviceHwInfo, InMemoryBackend, IommufdContext, IommufdError, x86_device
from pyctl.iommufd.objects import Device, HwptNested, HwptPaging, Ioas

RW = 6  # READABLE | WRITEABLE
R = 4
W = 2
FIXED = 1
MIB = 1 << 20
GIB = 1 << 30


def make_backend() -> InMemoryBackend:
    return InMemoryBackend(
        [
            x86_device("nvme0"),
            x86_device("edu0"),
            x86_device("wide0", ias=57),
            DeviceHwInfo("/machine/peripheral/nvme-ppc", "spapr", ias=64, nesting=False),
            DeviceHwInfo("/machine/peripheral/nvme-ppc2", "spapr", ias=64, nesting=False),
        ]
    )


def make_ctx(limit_pages: int | None = None) -> tuple[IommufdContext, InMemoryBackend]:
    be = make_backend()
    return IommufdContext(be, limit_pages=limit_pages), be


def snapshot(ctx: IommufdContext) -> Any:
    objs: dict[int, Any] = {}
    for oid, o in ctx.objects().items():
        if isinstance(o, Ioas):
            objs[oid] = (
                "IOAS",
                list(o.areas),
                sorted((r.start, r.last, r.owner) for r in o.reserved),
                list(o.allowed),
                list(o.hwpts),
                o.huge_pages,
                list(o.holes.holes()),
            )
        elif isinstance(o, HwptPaging):
            objs[oid] = (
                "PAGING",
                o.ioas_id,
                o.auto,
                o.nest_parent,
                set(o.devices),
                set(o.children),
            )
        elif isinstance(o, HwptNested):
            objs[oid] = ("NESTED", o.parent_id, o.s1_root, set(o.devices))
        elif isinstance(o, Device):
            objs[oid] = ("DEVICE", o.name, o.hwpt_id)
    be = ctx.backend
    assert isinstance(be, InMemoryBackend)
    wins = {d.device: be.windows(d.device) for d in be.devices() if d.platform == "spapr"}
    return (
        objs,
        ctx.account_mode,
        ctx.user_account.pinned_pages,
        dict(ctx.user_account._steps),
        ctx.mm_account.pinned_pages,
        be.query(),
        wins,
    )


def rejected(ctx: IommufdContext, errno: str, fn: Callable[[], object]) -> IommufdError:
    """``fn`` must raise ``errno`` and change neither the model nor the hardware."""
    before = snapshot(ctx)
    with pytest.raises(IommufdError) as ei:
        fn()
    assert ei.value.errno == errno, str(ei.value)
    assert ei.value.message
    assert snapshot(ctx) == before
    assert ctx.check_hardware() == []
    return ei.value
