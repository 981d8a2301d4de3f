"""Paging ``x-iommulab-query`` (docs/qmp.md): a domain's mappings in pages of
``max-mappings`` from a ``start`` cursor, ``next`` while more remain.  The
pages give exactly the merged mappings of one whole answer, each ``next`` is
where a merged mapping starts, a whole answer is bounded (over the bound it
is refused with a message that says to page), and bad arguments are refused
without changing anything."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Lab
from qemu.qmp import ExecuteError

PAGE = 4096
MAX_MAPPINGS = 1 << 16  # IOMMULAB_QUERY_MAX_MAPPINGS
BATCH = 8192


def _m(iova: int, size: int, addr: int, read: bool = True, write: bool = True) -> dict[str, Any]:
    return {"iova": iova, "size": size, "addr": addr, "read": read, "write": write}


def _map(lab: Lab, domain: int, mappings: list[dict[str, Any]]) -> None:
    for i in range(0, len(mappings), BATCH):
        lab.cmd("x-iommulab-map", domain=domain, mappings=mappings[i : i + BATCH])


def _varied(n: int) -> list[dict[str, Any]]:
    """Runs of 1 to 5 pages (pages of one run contiguous in and out, so they merge),
    each with other permissions than its neighbour; a 2 MiB block and a hole now and then."""
    out: list[dict[str, Any]] = []
    iova = 0x10000
    for i in range(n):
        pages = 1 + i % 5
        out.append(_m(iova, pages * PAGE, 0x100000 + iova, read=True, write=bool(i % 2)))
        iova += pages * PAGE
        if i % 97 == 0:
            iova += 3 * PAGE  # a hole
    block = (iova + (4 << 20)) & ~((2 << 20) - 1)
    out.append(_m(block, 2 << 20, 0x4000_0000, read=True, write=True))
    return out


def _pages(lab: Lab, domain: int, max_mappings: int, start: int = 0) -> tuple[list[Any], int]:
    """All mappings of ``domain`` page by page; and how many pages that took."""
    got: list[Any] = []
    pages = 0
    while True:
        info = lab.cmd("x-iommulab-query", domain=domain, start=start, max_mappings=max_mappings)
        pages += 1
        [d] = info["domains"]
        assert d["domain"] == domain
        assert len(d["mappings"]) <= max_mappings
        got.extend(d["mappings"])
        if "next" not in d:
            return got, pages
        assert len(d["mappings"]) == max_mappings
        assert d["next"] > start
        start = d["next"]


@pytest.mark.parametrize("max_mappings", [1, 7, 1000, MAX_MAPPINGS])
def test_pages_give_exactly_the_mappings_of_one_whole_answer(lab: Lab, max_mappings: int) -> None:
    lab.cmd("x-iommulab-domain-alloc", domain=1, type="paging")
    lab.cmd("x-iommulab-domain-alloc", domain=2, type="paging")
    _map(lab, 1, _varied(3000))
    lab.cmd("x-iommulab-map", domain=2, mappings=[_m(0, PAGE, 0)])
    whole = lab.cmd("x-iommulab-query")
    [d1] = [d for d in whole["domains"] if d["domain"] == 1]
    runs = d1["mappings"]
    assert len(runs) == 3001  # nothing merged across a permission change
    assert "next" not in d1
    got, pages = _pages(lab, 1, max_mappings)
    assert got == runs
    assert pages == -(-len(runs) // max_mappings)
    # each next is where a merged mapping starts: a page from it starts with that mapping
    starts = {m["iova"] for m in runs}
    page = lab.cmd("x-iommulab-query", domain=1, max_mappings=max_mappings)["domains"][0]
    if "next" in page:
        assert page["next"] in starts
        assert page["next"] == runs[max_mappings]["iova"]
    # the paged answer has the same domain facts and devices as the whole one
    one = lab.cmd("x-iommulab-query", domain=1, max_mappings=1)
    assert {k: v for k, v in one["domains"][0].items() if k not in ("mappings", "next")} == {
        k: v for k, v in d1.items() if k != "mappings"
    }
    assert one["devices"] == whole["devices"]


def test_a_start_inside_a_mapping_reports_it_from_there(lab: Lab) -> None:
    lab.cmd("x-iommulab-domain-alloc", domain=1, type="paging")
    lab.cmd(
        "x-iommulab-map",
        domain=1,
        mappings=[_m(0x10000, 8 * PAGE, 0x200000), _m(0x20000, PAGE, 0x900000, write=False)],
    )
    d = lab.cmd("x-iommulab-query", domain=1, start=0x13000)["domains"][0]
    assert d["mappings"] == [
        _m(0x13000, 5 * PAGE, 0x203000),
        _m(0x20000, PAGE, 0x900000, write=False),
    ]
    assert "next" not in d
    d = lab.cmd("x-iommulab-query", domain=1, start=0x13000, max_mappings=1)["domains"][0]
    assert d["mappings"] == [_m(0x13000, 5 * PAGE, 0x203000)] and d["next"] == 0x20000
    end = lab.cmd("x-iommulab-query", domain=1, start=0x21000)["domains"][0]
    assert end["mappings"] == [] and "next" not in end
    top = lab.cmd("x-iommulab-query", domain=1, start=(1 << 64) - 1)["domains"][0]
    assert top["mappings"] == [] and "next" not in top


def test_a_whole_answer_over_the_bound_is_refused_and_pages_still_work(lab: Lab) -> None:
    lab.cmd("x-iommulab-domain-alloc", domain=1, type="paging")
    # MAX_MAPPINGS + 1 single pages with alternating permissions: none merge
    n = MAX_MAPPINGS + 1
    _map(lab, 1, [_m(i * PAGE, PAGE, i * PAGE, write=bool(i % 2)) for i in range(n)])
    with pytest.raises(ExecuteError, match="page them with 'domain'"):
        lab.cmd("x-iommulab-query")
    got, pages = _pages(lab, 1, MAX_MAPPINGS)
    assert pages == 2
    assert got == [_m(i * PAGE, PAGE, i * PAGE, write=bool(i % 2)) for i in range(n)]
    # exactly at the bound a whole answer is given
    lab.cmd("x-iommulab-unmap", domain=1, ranges=[{"iova": (n - 1) * PAGE, "size": PAGE}])
    [d] = lab.cmd("x-iommulab-query")["domains"]
    assert len(d["mappings"]) == MAX_MAPPINGS


def test_mappings_false_lists_the_domains_without_their_mappings(lab: Lab) -> None:
    """The list a client pages from: every domain's facts (or one domain's), no mappings,
    also when the mappings are too many for one whole answer."""
    lab.cmd("x-iommulab-domain-alloc", domain=1, type="paging")
    lab.cmd("x-iommulab-domain-alloc", domain=2, type="paging")
    lab.cmd("x-iommulab-map", domain=2, mappings=[_m(0, PAGE, 0), _m(PAGE, PAGE, 0)])
    lab.cmd("x-iommulab-attach", device="edu0", mode="domain", domain=2)
    whole = lab.cmd("x-iommulab-query")
    bare = lab.cmd("x-iommulab-query", mappings=False)
    assert [d["mappings"] for d in bare["domains"]] == [[], []]
    assert [{**d, "mappings": []} for d in whole["domains"]] == bare["domains"]
    assert bare["devices"] == whole["devices"]
    [two] = lab.cmd("x-iommulab-query", domain=2, mappings=False)["domains"]
    assert two == {**whole["domains"][1], "mappings": []}
    _map(lab, 1, [_m(i * PAGE, PAGE, i * PAGE, write=bool(i % 2)) for i in range(MAX_MAPPINGS)])
    with pytest.raises(ExecuteError, match="page them"):
        lab.cmd("x-iommulab-query")
    after = lab.cmd("x-iommulab-query", mappings=False)
    # the same list; the maps moved the generation (a paging client sees it)
    assert after["generation"] > bare["generation"]
    assert {**after, "generation": 0} == {**bare, "generation": 0}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"domain": 1, "max-mappings": 0}, "max-mappings must be 1 to 65536"),
        ({"domain": 1, "max-mappings": MAX_MAPPINGS + 1}, "max-mappings must be 1 to 65536"),
        ({"start": 0}, "they need 'domain'"),
        ({"max-mappings": 5}, "they need 'domain'"),
        ({"domain": 9}, "no domain 9"),
        ({"domain": 1, "start": 1 << 64}, "start"),
        ({"domain": 1, "max-mappings": 1 << 32}, "max-mappings"),
        ({"mappings": False, "domain": 1, "start": 0}, "not with 'mappings' false"),
        ({"mappings": False, "domain": 1, "max-mappings": 1}, "not with 'mappings' false"),
        ({"mappings": False, "domain": 9}, "no domain 9"),
    ],
)
def test_bad_paging_arguments_are_refused_cleanly(
    lab: Lab, args: dict[str, Any], error: str
) -> None:
    lab.cmd("x-iommulab-domain-alloc", domain=1, type="paging")
    lab.cmd("x-iommulab-map", domain=1, mappings=[_m(0x1000, PAGE, 0x2000)])
    before = lab.cmd("x-iommulab-query")
    with pytest.raises(ExecuteError, match=error):
        lab.qmp.cmd("x-iommulab-query", iommu="viommu0", **args)
    assert lab.cmd("x-iommulab-query") == before
