"""The hole index behind the allocator and the pinned-page counter, against brute force."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyctl.iommufd import x86_device
from pyctl.iommufd.allocator import HoleSet, alloc_alignment, hole_fit
from pyctl.iommufd.errors import IommufdError
from pyctl.iommufd.pinning import PinAccount

EXAMPLES = int(os.environ.get("IOMMUFD_EXAMPLES", "60"))
SPACE = 256  # small address space, in units


def brute_find(free: set[int], base_lo: int, length: int, align: int, po: int) -> int | None:
    """Lowest hole start whose placement fits, by walking every unit."""
    spans: list[tuple[int, int]] = []
    for x in sorted(free):
        if spans and spans[-1][1] + 1 == x:
            spans[-1] = (spans[-1][0], x)
        else:
            spans.append((x, x))
    for s, e in spans:
        pos = hole_fit(s, e, length, align, po)
        if pos is not None:
            return pos
    return None


ops = st.lists(
    st.tuples(
        st.sampled_from(["take", "give", "find"]), st.integers(0, SPACE - 1), st.integers(1, 40)
    ),
    max_size=40,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    ops=ops,
    base=st.lists(st.tuples(st.integers(0, SPACE - 1), st.integers(1, 80)), min_size=1, max_size=3),
)
def test_holeset_matches_brute_force(
    ops: list[tuple[str, int, int]], base: list[tuple[int, int]]
) -> None:
    base_ranges = [(s, min(s + n - 1, SPACE - 1)) for s, n in base]
    hs = HoleSet(base_ranges)
    in_base = {x for s, e in base_ranges for x in range(s, e + 1)}
    free = set(in_base)
    for op, s, n in ops:
        e = min(s + n - 1, SPACE - 1)
        if op == "take":
            hs.take(s, e)
            free -= set(range(s, e + 1))
        elif op == "give":
            hs.give(s, e)
            free |= set(range(s, e + 1)) & in_base
        else:
            align = alloc_alignment(n, 0)
            assert hs.find(n, align) == brute_find(free, 0, n, align, 0)
        got = {x for hs_s, hs_e in hs.holes() for x in range(hs_s, hs_e + 1)}
        assert got == free
        # holes are maximal: no two touch
        spans = list(hs.holes())
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(spans))


def test_find_uses_large_class_bucket_and_boundary_scan() -> None:
    hs = HoleSet([(0, (1 << 40) - 1)])
    # leave small misaligned holes low and one big hole high
    for i in range(100):
        hs.take(i * 0x3000 + 0x1000, i * 0x3000 + 0x2FFF)
    assert hs.find(0x1000, 0x1000) == 0
    hs.take(0, 0xFFF)
    # 16 KiB aligned 16 KiB: no small hole works, the first fitting spot is after them
    pos = hs.find(0x4000, 0x4000)
    assert pos is not None and pos % 0x4000 == 0 and pos >= 100 * 0x3000


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 20)), max_size=40))
def test_pin_account_counts_distinct_pages(ops: list[tuple[bool, int, int]]) -> None:
    acct = PinAccount()
    ref: Counter[int] = Counter()
    held: list[tuple[int, int]] = []
    for pin, first, n in ops:
        if pin or not held:
            acct.pin([(first, first + n)])
            held.append((first, first + n))
            ref.update(range(first, first + n + 1))
        else:
            f, last = held.pop(0)
            acct.unpin([(f, last)])
            ref.subtract(range(f, last + 1))
        assert acct.pinned_pages == sum(1 for v in ref.values() if v > 0)
        for pfn in range(0, 82):
            assert acct.count(pfn) == ref[pfn]


def test_pin_limit_is_all_or_nothing() -> None:
    acct = PinAccount(limit_pages=10)
    acct.pin([(0, 4)])
    with pytest.raises(IommufdError) as ei:
        acct.pin([(3, 6), (20, 25)])
    assert ei.value.errno == "ENOMEM"
    assert acct.pinned_pages == 5
    assert [acct.count(p) for p in range(0, 8)] == [1, 1, 1, 1, 1, 0, 0, 0]
    acct.pin([(0, 9)])  # shared pages are not charged twice
    assert acct.pinned_pages == 10


def test_many_areas() -> None:
    """A large IOAS stays consistent (the benchmark goes to 1,000,000)."""
    from pyctl.iommufd import InMemoryBackend, IommufdContext

    ctx = IommufdContext(InMemoryBackend([x86_device("d")]))
    ioas = ctx.ioas_alloc()
    ctx.attach(ctx.bind("d"), ioas)
    iovas = [ctx.ioas_map(ioas, i * 0x1000, 0x1000, 6) for i in range(20000)]
    assert len(set(iovas)) == 20000
    for iova in iovas[::2]:
        ctx.ioas_unmap(ioas, iova, 0x1000)
    assert ctx.pinned_pages() == 10000
    again = ctx.ioas_map(ioas, 0, 0x1000, 6)
    assert again == min(iovas[::2])
    assert ctx.check_hardware() == []


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), min_size=1, max_size=60),
        min_size=1,
        max_size=6,
    )
)
def test_pin_batches_match_brute_force(batches: list[list[tuple[int, int]]]) -> None:
    """Large batches take the merge path, small ones the per-range path: same result."""
    acct = PinAccount()
    ref: Counter[int] = Counter()
    for batch in batches:
        ranges = [(f, f + n) for f, n in batch]
        acct.pin(ranges)
        for f, last in ranges:
            ref.update(range(f, last + 1))
    assert acct.pinned_pages == sum(1 for v in ref.values() if v > 0)
    assert all(acct.count(p) == ref[p] for p in range(0, 240))
    for batch in reversed(batches):
        acct.unpin([(f, f + n) for f, n in batch])
    assert acct.pinned_pages == 0
    assert acct.count(0) == 0 and len(acct._steps) == 1
