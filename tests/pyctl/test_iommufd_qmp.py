"""The object model driving the real iommulab-viommu in QEMU through the QMP backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from testvm import ViommuVm, needs_viommu

from pyctl.iommufd import (
    IOMMULAB_INV_ALL,
    NEST_PARENT,
    U64_MAX,
    IommufdContext,
    IommufdError,
    IommulabHwptData,
    IommulabInvalidateEntry,
)
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.iommufd.uapi import HwptDataType, HwptInvalidateDataType

RW = 6
MIB = 1 << 20

pytestmark = needs_viommu


@pytest.fixture
def hw() -> Iterator[QmpBackend]:
    with ViommuVm(devices=2) as vm, QmpBackend(str(vm.qmp_path)) as be:
        yield be


def test_map_attach_translate_unmap(hw: QmpBackend) -> None:
    ctx = IommufdContext(hw)
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("edu0")
    name = ctx.get_hw_info(dev).device
    assert name.startswith("/machine/")
    t = hw.translate(name, 0x1000, "read")
    assert not t.allowed and t.reason == "blocked"
    hwpt = ctx.attach(dev, ioas)
    iova = ctx.ioas_map(ioas, 0x100000, 2 * MIB, RW)
    t = hw.translate(name, iova + 0x1234, "write")
    assert t.allowed and t.addr == 0x101234
    assert ctx.check_hardware() == []
    assert {d.domain for d in hw.query().domains} == {hwpt}
    assert ctx.ioas_unmap(ioas, 0, U64_MAX) == 2 * MIB
    assert hw.translate(name, iova, "read").reason == "not-present"
    ctx.detach(dev)
    assert hw.query().domains == ()
    assert ctx.check_hardware() == []


def test_rejected_calls_leave_device_unchanged(hw: QmpBackend) -> None:
    ctx = IommufdContext(hw)
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("edu0")
    ctx.attach(dev, ioas)
    iova = ctx.ioas_map(ioas, 0, MIB, RW)
    before = hw.query()
    sent = hw.commands_sent
    cases: list[tuple[str, Callable[[], object]]] = [
        ("EEXIST", lambda: ctx.ioas_map(ioas, 0, MIB, RW | 1, iova=iova)),
        ("ENOENT", lambda: ctx.ioas_unmap(ioas, iova, MIB // 2)),
        ("EINVAL", lambda: ctx.ioas_map(ioas, 0, 0x800, RW)),
        ("EINVAL", lambda: ctx.ioas_map(ioas, 0, MIB, RW | 1, iova=0xFEE00000)),
        ("EBUSY", lambda: ctx.destroy(ioas)),
    ]
    for errno, fn in cases:
        with pytest.raises(IommufdError) as ei:
            fn()
        assert ei.value.errno == errno
    assert hw.commands_sent == sent  # refused before reaching the device
    assert hw.query() == before
    assert ctx.check_hardware() == []


def test_device_refusal_rolls_back_model(hw: QmpBackend) -> None:
    ctx = IommufdContext(hw)
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("edu0")
    # someone else took domain id 3 (the id the next HWPT will get) in the device
    hw.domain_alloc(3, "paging")
    with pytest.raises(IommufdError) as ei:
        ctx.attach(dev, ioas)
    assert ei.value.errno == "EIO" and "exist" in ei.value.message
    assert set(ctx.objects()) == {ioas, dev}
    assert [d.domain for d in hw.query().domains] == [3]
    hw.domain_free(3)
    ctx.attach(dev, ioas)
    assert ctx.check_hardware() == []


def test_replace_and_nested(hw: QmpBackend) -> None:
    ctx = IommufdContext(hw)
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    d0, d1 = ctx.bind("edu0"), ctx.bind("edu1")
    ha = ctx.attach(d0, a)
    assert ctx.attach(d1, a) == ha  # shared automatic domain
    ctx.ioas_map(b, 0x200000, MIB, RW | 1, iova=0x10000000)
    parent = ctx.hwpt_alloc(d0, b, NEST_PARENT)
    hb = ctx.replace(d0, parent)
    assert hw.translate(ctx.get_hw_info(d0).device, 0x10000000, "read").addr == 0x200000
    nested = ctx.hwpt_alloc(
        d1, parent, 0, HwptDataType.IOMMU_HWPT_DATA_IOMMULAB, IommulabHwptData(0x10000000)
    )
    ctx.replace(d1, nested)
    assert ha not in ctx.objects()  # the automatic HWPT of a lost its devices
    dom = {d.domain: d for d in hw.query().domains}
    assert dom[nested].parent == parent and dom[nested].s1_root == 0x10000000
    assert dom[hb].children == 1
    inv = HwptInvalidateDataType.IOMMU_HWPT_INVALIDATE_DATA_IOMMULAB
    entries = [
        IommulabInvalidateEntry(0x4000_0000, 0x2000),
        IommulabInvalidateEntry(flags=IOMMULAB_INV_ALL),
    ]
    before = hw.counters()["invalidations"]
    assert ctx.hwpt_invalidate(nested, inv, entries) == 2
    assert hw.counters()["invalidations"] > before
    assert ctx.check_hardware() == []


def test_large_domain_fill_is_chunked(hw: QmpBackend) -> None:
    hw.map_chunk = 64
    ctx = IommufdContext(hw)
    ioas = ctx.ioas_alloc()
    n = hw.map_chunk * 2 + 10
    for i in range(n):
        ctx.ioas_map(ioas, (2 * i) << 12, 4096, RW | 1, iova=(1 + 2 * i) << 12)
    dev = ctx.bind("edu0")
    sent = hw.commands_sent
    ctx.attach(dev, ioas)  # one domain filled with n mappings
    assert hw.commands_sent - sent == 1 + 3 + 1  # domain-alloc, 3 map chunks, attach
    dom = hw.query().domains[0]
    assert len(dom.mappings) == n
    assert ctx.check_hardware() == []
    assert ctx.ioas_unmap(ioas, 0, U64_MAX) == n * 4096
    assert hw.query().domains[0].mappings == ()


def test_refused_later_chunk_undoes_earlier_ones(hw: QmpBackend) -> None:
    from pyctl.iommufd import BackendError
    from pyctl.iommufd.backend import MapEntry

    hw.map_chunk = 4
    hw.domain_alloc(1, "paging")
    hw.map(1, [MapEntry(0x100000, 4096, 0, True, False)])
    batch = [MapEntry((1 + 2 * k) << 12, 4096, 0, True, True) for k in range(10)]
    batch.append(MapEntry(0x100000, 4096, 0, True, True))  # overlaps: third chunk refused
    with pytest.raises(BackendError, match="x-iommulab-map"):
        hw.map(1, batch)
    (dom,) = hw.query().domains
    assert dom.mappings == (MapEntry(0x100000, 4096, 0, True, False),)


@pytest.mark.parametrize("payload", ["fd", "base64", "inline"])
def test_every_payload_form_maps_the_same(hw: QmpBackend, payload: str) -> None:
    from pyctl.iommufd.backend import MapEntry

    assert hw.payload_mode() == "fd"  # a UNIX socket: fds can go
    hw.payload = payload  # type: ignore[assignment]
    assert hw.payload_mode() == payload
    hw.map_chunk = 3
    hw.domain_alloc(1, "paging")
    batch = [MapEntry((1 + 2 * k) << 12, 4096, k << 12, k % 2 == 0, True) for k in range(10)]
    sent = hw.commands_sent
    hw.map(1, batch)
    assert hw.commands_sent - sent == 4 + (payload != "inline")  # + hw-info for max-batch
    (dom,) = hw.query().domains
    assert dom.mappings == tuple(batch)
    assert hw.unmap(1, [(m.iova, m.size) for m in batch[:5]]) == 5 * 4096
    assert hw.query().domains[0].mappings == tuple(batch[5:])


def test_map_pages_maps_one_page_each_all_or_nothing(hw: QmpBackend) -> None:
    from pyctl.iommufd import BackendError
    from pyctl.iommufd.backend import MapEntry

    assert hw.payload_mode(1) == "inline"  # a tiny batch is cheapest as JSON
    hw.map_chunk = 3
    hw.domain_alloc(1, "paging")
    hw.map_pages(1, 0x100000, 0x200000, 8 * 4096, write=False)
    # separate 4 KiB mappings, merged in the answer (same permissions, contiguous)
    (dom,) = hw.query().domains
    assert dom.mappings == (MapEntry(0x100000, 8 * 4096, 0x200000, True, False),)
    assert hw.counters()["iotlb-entries"] == 0
    hw.map(1, [MapEntry(0x10_0000 + 20 * 4096, 4096, 0, True, True)])
    with pytest.raises(BackendError, match="x-iommulab-map"):  # the 7th chunk overlaps
        hw.map_pages(1, 0x100000 + 8 * 4096, 0, 16 * 4096)
    assert len(hw.query().domains[0].mappings) == 2  # the first chunks were undone


def test_fast_path_keeps_events_errors_and_big_answers(hw: QmpBackend) -> None:
    """QmpSession's synchronous path hands events that come before an answer to the
    listeners, raises QEMU's refusals, and reads answers of megabytes (qmp_fast.py)."""
    from qemu.qmp import ExecuteError

    s = hw.session
    events = s.listen(["RESUME", "STOP"])
    s.cmd("cont")  # RESUME comes before the answer: qemu.qmp's reader takes over
    s.cmd("stop")
    assert [e["event"] for e in s.drain(events)] == ["RESUME", "STOP"]
    with pytest.raises(ExecuteError, match="'nosuch' is not") as e:
        s.cmd("x-iommulab-query", iommu="nosuch")
    assert e.value.error.error.class_ == "GenericError"
    schema = s.cmd("query-qmp-schema")  # ~300 KB in one line
    assert any(x.get("name") == "x-iommulab-map" for x in schema)
    assert s.cmd("query-status")["status"] == "paused"
