"""Seeded operation sequences for the differential run.

The generator looks at the model's state (its objects and areas) to choose
plausible arguments, and mixes in invalid ones: ids that do not exist or
name the wrong type, unknown flags, misaligned and overflowing ranges.  Up
to the first divergence the model's state is the kernel's, so choosing from
it reaches the kernel's interesting states.  The same seed and the same
model answers give the same sequence.
"""

from __future__ import annotations

import random

from pyctl.iommufd.objects import Device, HwptNested, HwptPaging, Ioas, Selftest

from .model import IOMMU_HWPT_DATA_SELFTEST, ModelSide
from .protocol import Op, Src

FIXED, WRITE, READ = 1, 2, 4
U64 = (1 << 64) - 1
NEST_PARENT = 1
#: ops and their weights
WEIGHTS = {
    "ia": 5, "d": 8, "m": 22, "u": 12, "c": 8, "r": 6, "a": 5,
    "o": 4, "h": 9, "md": 9, "mr": 6, "gi": 2,
}  # fmt: skip
MAX_OBJECTS = 24
MAX_AREAS = 24


class Generator:
    """``next_op()``: the next operation for ``model``'s current state."""

    def __init__(self, seed: int, model: ModelSide) -> None:
        self.rng = random.Random(seed)
        self.model = model
        self.facts = model.facts
        self.hello = model.hello

    # -- state ------------------------------------------------------------
    def _objs(self, cls: type) -> list[int]:
        assert self.model.ctx is not None
        return [i for i, o in self.model.ctx.objects().items() if isinstance(o, cls)]

    def _any_id(self) -> int:
        """Some object id: mostly a live one of any type, else a free or absurd one."""
        assert self.model.ctx is not None
        live = list(self.model.ctx.objects())
        r = self.rng.random()
        if live and r < 0.8:
            return self.rng.choice(live)
        if r < 0.95:
            return max(live, default=0) + self.rng.randint(1, 3)
        return self.rng.choice((0, 0xFFFFFFFF, 1 << 31))

    def _pick(self, ids: list[int], bad: float = 0.1) -> int:
        """One of ``ids``, or with probability ``bad`` (or if none) any id."""
        if ids and self.rng.random() >= bad:
            return self.rng.choice(ids)
        return self._any_id()

    def _areas(self, ioas: int) -> list[tuple[int, int]]:
        assert self.model.ctx is not None
        try:
            return [(a.iova, a.length) for a in self.model.ctx.areas(ioas)]
        except Exception:  # not an IOAS
            return []

    # -- values -----------------------------------------------------------
    def _pages(self, hi: int = 16) -> int:
        return self.facts.pgsize * self.rng.randint(1, hi)

    def _length(self) -> int:
        r = self.rng.random()
        if r < 0.85:
            return self._pages()
        return self.rng.choice(
            (0, 1, self.facts.pgsize + 1, self.facts.page_size, U64, U64 - 4095, 1 << 63)
        )

    def _iova(self, length: int) -> int:
        start, last = self.facts.aperture
        r = self.rng.random()
        pg = self.facts.pgsize
        if r < 0.75:
            span = max(1, (last + 1 - start - length) // pg)
            return start + pg * self.rng.randrange(min(span, 4096))
        if r < 0.85:
            return pg * self.rng.randrange(start // pg)  # below the aperture
        if r < 0.93:
            return start + self.rng.randrange(1, pg)  # misaligned
        return self.rng.choice((last + 1, U64 - pg + 1, 1 << 63, U64))

    def _src(self, length: int) -> Src:
        h = self.hello
        pg = self.facts.pgsize
        buf = self.rng.randrange(h.nbuf)
        room = max(0, h.buf_size - min(length, h.buf_size))
        off = pg * self.rng.randrange(room // pg + 1)
        if self.rng.random() < 0.08:
            off = min(room, off + self.rng.randrange(1, pg))  # an in-page offset
        return Src(buf, off)

    def _flags(self) -> int:
        r = self.rng.random()
        if r < 0.05:
            return self.rng.choice((0, 8, 1 << 31))  # no access / unknown flags
        f = self.rng.choice((READ | WRITE, READ | WRITE, READ, WRITE))
        return f | (FIXED if self.rng.random() < 0.5 else 0)

    # -- operations -------------------------------------------------------
    def next_op(self) -> Op:
        assert self.model.ctx is not None
        names = list(WEIGHTS)
        weights = [WEIGHTS[n] for n in names]
        if len(self.model.ctx.objects()) > MAX_OBJECTS:
            weights[names.index("d")] *= 8
        name = self.rng.choices(names, weights)[0]
        return getattr(self, f"_op_{name}")()  # type: ignore[no-any-return]

    def _op_ia(self) -> Op:
        return Op("ia", (0 if self.rng.random() < 0.95 else self.rng.choice((1, 1 << 31)),))

    def _op_d(self) -> Op:
        # mostly the things that can go: SELFTEST objects, HWPTs, then IOAS
        cand = self._objs(Selftest) * 3 + self._objs(HwptNested) * 2 + self._objs(HwptPaging)
        cand += self._objs(Ioas)
        return Op("d", (self._pick(cand, bad=0.15),))

    def _op_m(self) -> Op:
        ioas = self._pick(self._objs(Ioas), bad=0.05)
        if len(self._areas(ioas)) > MAX_AREAS:
            return self._op_u()
        length = self._length()
        flags = self._flags()
        iova = self._iova(length) if flags & FIXED or self.rng.random() < 0.2 else 0
        return Op("m", (ioas, flags, iova, self._src(length), length))

    def _op_u(self) -> Op:
        ioas = self._pick(self._objs(Ioas), bad=0.05)
        areas = self._areas(ioas)
        r = self.rng.random()
        if areas and r < 0.6:
            iova, length = self.rng.choice(areas)
            if self.rng.random() < 0.25 and length > self.facts.pgsize:
                length -= self.facts.pgsize  # would split the area: ENOENT
            elif self.rng.random() < 0.25:  # several areas at once
                last = max(a[0] + a[1] for a in areas)
                length = last - iova
            return Op("u", (ioas, iova, length))
        if r < 0.75:
            return Op("u", (ioas, 0, U64))  # everything
        length = self._length()
        return Op("u", (ioas, self._iova(length), length))

    def _op_c(self) -> Op:
        ioases = self._objs(Ioas)
        src = self._pick(ioases, bad=0.05)
        dst = self._pick(ioases, bad=0.05)
        areas = self._areas(src)
        if areas and self.rng.random() < 0.85:
            iova, length = self.rng.choice(areas)
            if self.rng.random() < 0.3 and length > self.facts.pgsize:
                cut = self.facts.pgsize * self.rng.randrange(length // self.facts.pgsize)
                iova, length = iova + cut, length - cut
        else:
            length = self._length()
            iova = self._iova(length)
        flags = self._flags()
        dst_iova = self._iova(length) if flags & FIXED else 0
        return Op("c", (dst, flags, dst_iova, src, iova, length))

    def _op_r(self) -> Op:
        ioas = self._pick(self._objs(Ioas), bad=0.1)
        return Op("r", (ioas, self.rng.choice((0, 1, 2, 8, 64))))

    def _op_a(self) -> Op:
        ioas = self._pick(self._objs(Ioas), bad=0.1)
        n = self.rng.choice((0, 0, 1, 1, 2, 3))
        args: list[int] = [ioas, n]
        start, last = self.facts.aperture
        for _ in range(n):
            r = self.rng.random()
            if r < 0.7:
                s = start + self._pages(1 << 12)
                e = s + self._pages(1 << 12) - 1
            elif r < 0.85:
                s, e = 0, self.rng.choice((start - 1, last, U64))
            else:
                s = start + self._pages(64)
                e = s - self.rng.choice((0, 1))  # start >= last
            args += [s, e]
        return Op("a", tuple(args))

    def _op_o(self) -> Op:
        r = self.rng.random()
        op = self.rng.choice((0, 1, 1, 2))  # SET, GET, unknown
        val = self.rng.choice((0, 1, 1, 2))
        if r < 0.6:
            return Op("o", (1, op, self._pick(self._objs(Ioas), bad=0.15), val))  # HUGE_PAGES
        if r < 0.9:
            return Op("o", (0, op, self.rng.choice((0, 0, 0, 1)), val))  # RLIMIT_MODE
        return Op("o", (self.rng.choice((2, 0xFFFF)), op, 0, val))

    def _op_h(self) -> Op:
        dev = self._pick(self._objs(Device), bad=0.1)
        parents = [i for i in self._objs(HwptPaging) if self._is_parent(i)]
        r = self.rng.random()
        if r < 0.5:  # a paging HWPT on an IOAS
            pt = self._pick(self._objs(Ioas), bad=0.1)
            flags = self.rng.choice((0, 0, NEST_PARENT, NEST_PARENT, 1 << 3, 1 << 7))
            dtype, dlen = (0, 0) if self.rng.random() < 0.9 else (IOMMU_HWPT_DATA_SELFTEST, 4)
        else:  # a nested one
            pt = self._pick(parents or self._objs(HwptPaging), bad=0.15)
            flags = 0 if self.rng.random() < 0.9 else self.rng.choice((NEST_PARENT, 1 << 3))
            dtype, dlen = self.rng.choice(
                ((IOMMU_HWPT_DATA_SELFTEST, 4),) * 6
                + (
                    (IOMMU_HWPT_DATA_SELFTEST, 8),
                    (IOMMU_HWPT_DATA_SELFTEST, 2),
                    (0, 0),
                    (0, 4),
                    (1, 4),
                    (IOMMU_HWPT_DATA_SELFTEST, 0),
                )
            )
        return Op("h", (dev, pt, flags, dtype, dlen, self.rng.randrange(1 << 32)))

    def _is_parent(self, hwpt: int) -> bool:
        assert self.model.ctx is not None
        o = self.model.ctx.objects().get(hwpt)
        return isinstance(o, HwptPaging) and o.nest_parent

    def _op_md(self) -> Op:
        if len(self._objs(Selftest)) >= 6:
            return self._op_d()
        pts = self._objs(Ioas) * 2 + self._objs(HwptPaging) + self._objs(HwptNested)
        return Op("md", (self._pick(pts, bad=0.1),))

    def _op_mr(self) -> Op:
        stdev = self._pick(self._objs(Selftest), bad=0.1)
        pts = self._objs(Ioas) + self._objs(HwptPaging) + self._objs(HwptNested)
        return Op("mr", (stdev, self._pick(pts, bad=0.1)))

    def _op_gi(self) -> Op:
        return Op("gi", (self._pick(self._objs(Device), bad=0.3),))
