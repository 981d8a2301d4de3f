"""Property tests: MAP/UNMAP/COPY/ALLOW_IOVAS against a simple reference model.

The reference keeps areas in a plain dict and finds free IOVA by walking
everything; the model must agree on every result and every errno, keep the
hardware in sync and count pinned pages as the distinct pages mapped in
domain-backed IOAS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from test_iommufd_lib import make_backend, make_ctx, snapshot
from testvm import ViommuVm, has_viommu, qemu_binary

from pyctl.iommufd import U64_MAX, IommufdContext, IommufdError, ModelOptions
from pyctl.iommufd.objects import Ioas
from pyctl.iommufd.qmp_backend import QmpBackend

settings.register_profile(
    "iommufd",
    max_examples=int(os.environ.get("IOMMUFD_EXAMPLES", "40")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile("iommufd")

PG = 4096
MSI = (0xFEE00000, 0xFEEFFFFF)
#: a small IOVA window straddling the MSI reservation so that collisions happen
BASE = MSI[0] - 24 * PG
NPAGES = 40


def iova_of(page: int) -> int:
    return BASE + page * PG


@dataclass
class RefArea:
    length: int
    phys: int
    read: bool
    write: bool
    pages_writable: bool


@dataclass
class RefIoas:
    reserved: list[tuple[int, int]]
    domain: bool
    areas: dict[int, RefArea] = field(default_factory=dict)
    allowed: list[tuple[int, int]] = field(default_factory=list)

    def overlapping(self, s: int, e: int) -> list[int]:
        return sorted(i for i, a in self.areas.items() if i <= e and s <= i + a.length - 1)

    def free_spans(self) -> list[tuple[int, int]]:
        base: list[tuple[int, int]] = []
        for s, e in sorted(self.allowed) or [(PG, U64_MAX - PG)]:
            if base and s == base[-1][1] + 1:  # touching allowed ranges form one span
                base[-1] = (base[-1][0], e)
            else:
                base.append((s, e))
        base = [(max(s, PG), min(e, U64_MAX - PG)) for s, e in base]
        used = sorted(self.reserved + [(i, i + a.length - 1) for i, a in self.areas.items()])
        spans: list[tuple[int, int]] = []
        for s, e in sorted(base):
            cur = s
            for us, ue in used:
                if ue < cur or us > e:
                    continue
                if us > cur:
                    spans.append((cur, us - 1))
                cur = max(cur, ue + 1)
            if cur <= e:
                spans.append((cur, e))
        return spans


def ref_alloc(ref: RefIoas, length: int, phys: int) -> int | None:
    align = 1 << (length - 1).bit_length()
    if phys:
        align = min(align, phys & -phys)
    for s, e in ref.free_spans():
        pos = ((s + align - 1) // align) * align
        if pos + length - 1 <= e:
            return pos
    return None


class IoasMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ctx = self.make_context()
        self.ids = [self.ctx.ioas_alloc(), self.ctx.ioas_alloc()]
        self.dev = self.ctx.bind(self.device)
        self.ctx.attach(self.dev, self.ids[0])
        self.refs = [RefIoas([MSI, (1 << 48, U64_MAX)], True), RefIoas([], False)]

    device = "nvme0"

    def make_context(self) -> IommufdContext:
        return make_ctx()[0]

    def _snapshot(self) -> object:
        return snapshot(self.ctx)

    def _expect(self, errno: str | None, fn: object) -> object:
        before = self._snapshot()
        try:
            got = fn()  # type: ignore[operator]
        except IommufdError as e:
            assert e.errno == errno, f"model raised {e}, reference expected {errno}"
            assert self._snapshot() == before
            return None
        assert errno is None, f"model succeeded, reference expected {errno}"
        return got

    def _ref_place(
        self, ref: RefIoas, fixed: bool, iova: int, length: int, phys: int
    ) -> tuple[str | None, int]:
        if not fixed:
            pos = ref_alloc(ref, length, phys)
            return ("ENOSPC", 0) if pos is None else (None, pos)
        last = iova + length - 1
        if any(s <= last and iova <= e for s, e in ref.reserved):
            return "EINVAL", 0
        if ref.overlapping(iova, last):
            return "EEXIST", 0
        return None, iova

    @rule(
        which=st.integers(0, 1),
        phys_page=st.integers(0, 64),
        npages=st.integers(1, 6),
        page=st.integers(0, NPAGES - 1),
        fixed=st.booleans(),
        prot=st.sampled_from([2, 4, 6]),
    )
    def map(
        self, which: int, phys_page: int, npages: int, page: int, fixed: bool, prot: int
    ) -> None:
        ref = self.refs[which]
        length, phys, iova = npages * PG, phys_page * PG, iova_of(page)
        err, pos = self._ref_place(ref, fixed, iova, length, phys)
        got = self._expect(
            err, lambda: self.ctx.ioas_map(self.ids[which], phys, length, prot | int(fixed), iova)
        )
        if err is None:
            assert got == pos
            w = bool(prot & 2)
            ref.areas[pos] = RefArea(length, phys, bool(prot & 4), w, w)

    @rule(
        which=st.integers(0, 1),
        page=st.integers(0, NPAGES),
        npages=st.integers(1, 12),
        everything=st.booleans(),
    )
    def unmap(self, which: int, page: int, npages: int, everything: bool) -> None:
        ref = self.refs[which]
        if everything:
            total = sum(a.length for a in ref.areas.values())
            got = self._expect(None, lambda: self.ctx.ioas_unmap(self.ids[which], 0, U64_MAX))
            assert got == total
            ref.areas.clear()
            return
        s, n = iova_of(page), npages * PG
        hits = ref.overlapping(s, s + n - 1)
        whole = all(i >= s and i + ref.areas[i].length <= s + n for i in hits)
        err = None if hits and whole else "ENOENT"
        got = self._expect(err, lambda: self.ctx.ioas_unmap(self.ids[which], s, n))
        if err is None:
            assert got == sum(ref.areas[i].length for i in hits)
            for i in hits:
                del ref.areas[i]

    @rule(
        src=st.integers(0, 1),
        page=st.integers(0, NPAGES),
        npages=st.integers(1, 6),
        dst_page=st.integers(0, NPAGES - 1),
        fixed=st.booleans(),
        prot=st.sampled_from([2, 4, 6]),
    )
    def copy(self, src: int, page: int, npages: int, dst_page: int, fixed: bool, prot: int) -> None:
        sref, dref = self.refs[src], self.refs[1 - src]
        s, n = iova_of(page), npages * PG
        # contiguous coverage by source areas
        pieces: list[tuple[int, int, bool]] = []
        cur = s
        while cur < s + n:
            hit = sref.overlapping(cur, cur)
            if not hit:
                break
            a = sref.areas[hit[0]]
            end = min(hit[0] + a.length, s + n)
            pieces.append((a.phys + cur - hit[0], end - cur, a.pages_writable))
            cur = end
        err: str | None = None
        pos = 0
        if cur < s + n:
            err = "ENOENT"
        else:
            err, pos = self._ref_place(dref, fixed, iova_of(dst_page), n, pieces[0][0])
            if err is None and prot & 2 and not all(p[2] for p in pieces):
                err = "EPERM"  # iopt_insert_area(): after the IOVA is placed
        got = self._expect(
            err,
            lambda: self.ctx.ioas_copy(
                self.ids[1 - src], iova_of(dst_page), self.ids[src], s, n, prot | int(fixed)
            ),
        )
        if err is None:
            assert got == pos
            for ph, ln, pw in pieces:
                dref.areas[pos] = RefArea(ln, ph, bool(prot & 4), bool(prot & 2), pw)
                pos += ln

    @rule(
        which=st.integers(0, 1),
        spans=st.lists(st.tuples(st.integers(0, NPAGES), st.integers(1, 8)), max_size=3),
    )
    def allow(self, which: int, spans: list[tuple[int, int]]) -> None:
        ref = self.refs[which]
        ranges = [(iova_of(p), iova_of(p) + n * PG - 1) for p, n in spans]
        err: str | None = None
        for i, (s, e) in enumerate(ranges):
            if any(s <= e2 and s2 <= e for s2, e2 in ranges[:i]):
                err = "EINVAL"
                break
        if err is None and any(s <= re and rs <= e for s, e in ranges for rs, re in ref.reserved):
            err = "EADDRINUSE"
        self._expect(err, lambda: self.ctx.ioas_allow_iovas(self.ids[which], ranges))
        if err is None:
            ref.allowed = sorted(ranges)

    @invariant()
    def agrees(self) -> None:
        for oid, ref in zip(self.ids, self.refs, strict=True):
            got = {a.iova: (a.length, a.phys, a.read, a.write) for a in self.ctx.areas(oid)}
            want = {i: (a.length, a.phys, a.read, a.write) for i, a in ref.areas.items()}
            assert got == want
        assert self.ctx.check_hardware() == []
        pages: set[int] = set()
        for ref in self.refs:
            if ref.domain:
                for a in ref.areas.values():
                    pages.update(range(a.phys // PG, (a.phys + a.length - 1) // PG + 1))
        assert self.ctx.pinned_pages() == len(pages)


TestIoasMachine = IoasMachine.TestCase
TestIoasMachine.settings = PROFILE


class KernelUnmapMachine(IoasMachine):
    """The same rules with ``ModelOptions(atomic_unmap=False)``: UNMAP as the kernel's
    iopt_unmap_iova_range(), whole areas in IOVA order until one would be split."""

    def make_context(self) -> IommufdContext:
        return IommufdContext(make_backend(), options=ModelOptions(atomic_unmap=False))

    @rule(
        which=st.integers(0, 1),
        page=st.integers(0, NPAGES),
        npages=st.integers(1, 12),
    )
    def unmap(self, which: int, page: int, npages: int) -> None:
        ref = self.refs[which]
        s, n = iova_of(page), npages * PG
        done: list[int] = []
        split = False
        for i in ref.overlapping(s, s + n - 1):
            if i < s or i + ref.areas[i].length > s + n:
                split = True
                break
            done.append(i)
        want = sum(ref.areas[i].length for i in done)
        try:
            got = self.ctx.ioas_unmap(self.ids[which], s, n)
        except IommufdError as e:
            assert e.errno == "ENOENT" and (split or not done), str(e)
            assert e.data.get("unmapped", 0) == want
        else:
            assert not split and done and got == want
        for i in done:
            del ref.areas[i]


TestKernelUnmapMachine = KernelUnmapMachine.TestCase
TestKernelUnmapMachine.settings = PROFILE


# ---- the same machine against the real device through QMP -------------------
_BIN = qemu_binary()
_HAVE_QEMU = _BIN is not None and has_viommu(_BIN)
_VM: dict[str, object] = {}


def _shared_backend() -> QmpBackend:
    """One paused QEMU for all examples; each example leaves the device empty."""
    if "hw" not in _VM:
        vm = ViommuVm(devices=1).start()
        _VM["vm"] = vm
        _VM["hw"] = QmpBackend(str(vm.qmp_path))
    hw = _VM["hw"]
    assert isinstance(hw, QmpBackend)
    return hw


class QmpIoasMachine(IoasMachine):
    device = "edu0"

    def make_context(self) -> IommufdContext:
        hw = _shared_backend()
        assert hw.query().domains == (), "previous example left domains behind"
        return IommufdContext(hw)

    def _snapshot(self) -> object:
        # the model's view plus what the device reports
        objs = {
            oid: (list(o.areas), list(o.allowed), list(o.hwpts))
            for oid, o in self.ctx.objects().items()
            if isinstance(o, Ioas)
        }
        return objs, self.ctx.pinned_pages(), self.ctx.backend.query()

    def teardown(self) -> None:
        for oid in self.ids:
            self.ctx.ioas_unmap(oid, 0, U64_MAX)
        self.ctx.unbind(self.dev)
        for oid in self.ids:
            self.ctx.destroy(oid)
        assert self.ctx.backend.query().domains == ()


@pytest.fixture(scope="module", autouse=False)
def _qemu_cleanup() -> Iterator[None]:
    yield
    hw, vm = _VM.pop("hw", None), _VM.pop("vm", None)
    if isinstance(hw, QmpBackend):
        hw.close()
    if isinstance(vm, ViommuVm):
        vm.stop()


@pytest.mark.skipif(not _HAVE_QEMU, reason="QEMU with iommulab-viommu not built")
@pytest.mark.usefixtures("_qemu_cleanup")
def test_qmp_machine() -> None:
    run_state_machine_as_test(
        QmpIoasMachine,
        settings=settings(PROFILE, max_examples=int(os.environ.get("IOMMUFD_QMP_EXAMPLES", "8"))),
    )
