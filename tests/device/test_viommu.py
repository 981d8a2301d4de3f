"""iommulab-viommu with the edu device: bytes that land, faults, invalidation,
replacement and bad QMP input.  See conftest.py for the setup."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from conftest import Lab
from qemu.qmp import ExecuteError

PAGE = 4096
SRC, DST = 0x100000, 0x200000  # guest physical pages used as DMA buffers
S1_P, S1_R, S1_W, S1_PS = 1, 2, 4, 0x80


def pattern(seed: int, n: int = PAGE) -> bytes:
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


def paging(lab: Lab, domain: int, *maps: tuple[int, int, int, bool, bool]) -> None:
    lab.cmd("x-iommulab-domain-alloc", domain=domain, type="paging")
    if maps:
        lab.cmd(
            "x-iommulab-map",
            domain=domain,
            mappings=[
                {"iova": i, "size": s, "addr": a, "read": r, "write": w} for i, s, a, r, w in maps
            ],
        )


def attach(lab: Lab, mode: str, domain: int | None = None) -> None:
    args: dict[str, Any] = {"device": "edu0", "mode": mode}
    if domain is not None:
        args["domain"] = domain
    lab.cmd("x-iommulab-attach", **args)


def faults(lab: Lab) -> list[dict[str, Any]]:
    res: list[dict[str, Any]] = lab.cmd("x-iommulab-query-faults", clear=True)["faults"]
    return res


def load_src(lab: Lab, data: bytes) -> None:
    """Put data into edu's buffer through a temporary bypass attachment."""
    lab.qt.memwrite(SRC, data)
    before = lab.cmd("x-iommulab-query")["devices"]
    attach(lab, "bypass")
    lab.dma_to_edu(SRC)
    edu = next(d for d in before if d.get("id") == "edu0")
    attach(lab, edu["mode"], edu.get("domain"))


def test_schema_lists_unstable_commands(lab: Lab) -> None:
    schema: list[dict[str, Any]] = lab.qmp.cmd("query-qmp-schema")  # type: ignore[assignment]
    cmds = {e["name"]: e for e in schema if e.get("meta-type") == "command"}
    names = {
        "x-iommulab-domain-alloc",
        "x-iommulab-domain-free",
        "x-iommulab-map",
        "x-iommulab-unmap",
        "x-iommulab-attach",
        "x-iommulab-invalidate",
        "x-iommulab-query",
        "x-iommulab-query-counters",
        "x-iommulab-translate",
        "x-iommulab-query-faults",
    }
    assert names <= cmds.keys()
    assert all("unstable" in cmds[n].get("features", []) for n in names)
    events = {e["name"] for e in schema if e.get("meta-type") == "event"}
    assert "X_IOMMULAB_FAULT" in events


def test_blocked_by_default_then_bypass(lab: Lab) -> None:
    lab.qt.memwrite(SRC, pattern(1))
    lab.qt.memset(DST, PAGE, 0x5A)
    lab.dma_to_edu(SRC)
    lab.dma_from_edu(DST)
    assert lab.qt.memread(DST, PAGE) == b"\x5a" * PAGE
    f = faults(lab)
    assert [(x["stage"], x["reason"], x["access"]) for x in f] == [
        ("device", "blocked", "read"),
        ("device", "blocked", "write"),
    ]
    assert f[0]["device"] == "/machine/peripheral/edu0"
    assert f[0]["iova"] == SRC and f[1]["iova"] == DST
    assert lab.events("X_IOMMULAB_FAULT")
    attach(lab, "bypass")
    lab.dma_to_edu(SRC)
    lab.dma_from_edu(DST)
    assert lab.qt.memread(DST, PAGE) == pattern(1)
    assert faults(lab) == []


def test_one_fault_query_for_all_queues(lab: Lab) -> None:
    """x-iommulab-query-faults without iommu reads every lab queue (here the
    vIOMMU's); bad names are refused and clear nothing."""
    lab.dma_from_edu(DST)  # blocked
    q = lab.qmp.cmd("x-iommulab-query-faults")
    (f,) = q["faults"]
    assert (f["iommu"], f["device"], f["requester-id"], f["stage"]) == (
        "/machine/peripheral/viommu0",
        "/machine/peripheral/edu0",
        0x18,
        "device",
    )
    assert "liobn" not in f and "tce" not in f and "phb" not in f
    (e,) = lab.events("X_IOMMULAB_FAULT")
    assert {k: v for k, v in e["data"].items() if k != "suppressed"} == f
    for bad, msg in (
        ("nosuch", "'nosuch' is not an iommulab vIOMMU or a pseries PHB"),
        ("edu0", "'edu0' is neither an iommulab vIOMMU nor a pseries PHB"),
    ):
        with pytest.raises(ExecuteError, match=msg):
            lab.qmp.cmd("x-iommulab-query-faults", iommu=bad, clear=True)
    assert lab.cmd("x-iommulab-query-faults", clear=True) == q
    assert lab.qmp.cmd("x-iommulab-query-faults")["faults"] == []


def test_stage2_dma_lands_only_in_mapping(lab: Lab) -> None:
    paging(
        lab, 1, (0x10000000, PAGE, SRC, True, False), (0x7F0000000000, 2 * PAGE, DST, False, True)
    )
    attach(lab, "domain", 1)
    lab.qt.memwrite(SRC, pattern(2))
    lab.qt.memset(DST - 0x8000, 0x18000, 0x5A)
    lab.dma_to_edu(0x10000000)
    lab.dma_from_edu(0x7F0000000000 + 0x800, 0x1000)  # spans both pages
    got = lab.qt.memread(DST - 0x8000, 0x18000)
    want = bytearray(b"\x5a" * 0x18000)
    want[0x8800:0x9800] = pattern(2)
    assert got == bytes(want)
    assert faults(lab) == []
    c = lab.cmd("x-iommulab-query-counters")
    assert c["walks"] >= 2 and c["faults"] == 0


def test_stage2_faults_touch_no_memory(lab: Lab) -> None:
    paging(lab, 1, (0x10000000, PAGE, SRC, True, False), (0x20000000, PAGE, DST, True, False))
    attach(lab, "domain", 1)
    lab.qt.memwrite(SRC, pattern(3))
    lab.qt.memset(DST, PAGE, 0x5A)
    lab.qt.memset(0x300000, PAGE, 0x5A)
    lab.dma_to_edu(0x10000000)
    lab.dma_from_edu(0x20000000)  # read-only mapping
    lab.dma_from_edu(0x300000)  # unmapped (RAM at that address)
    lab.dma_from_edu(1 << 48)  # beyond the 48-bit input size
    assert lab.qt.memread(DST, PAGE) == b"\x5a" * PAGE
    assert lab.qt.memread(0x300000, PAGE) == b"\x5a" * PAGE
    got = [(x["iova"], x["stage"], x["reason"], x["access"], x.get("domain")) for x in faults(lab)]
    assert got == [
        (0x20000000, "stage2", "permission", "write", 1),
        (0x300000, "stage2", "not-present", "write", 1),
        (1 << 48, "stage2", "address-size", "write", 1),
    ]
    ev = lab.events("X_IOMMULAB_FAULT")
    assert [e["data"]["reason"] for e in ev] == ["permission", "not-present", "address-size"]
    assert ev[0]["data"]["device"] == "/machine/peripheral/edu0"


def test_unmap_takes_effect_before_returning(lab: Lab) -> None:
    paging(lab, 1, (0x10000000, PAGE, SRC, True, True), (0x20000000, PAGE, DST, True, True))
    attach(lab, "domain", 1)
    lab.qt.memwrite(SRC, pattern(4))
    lab.dma_to_edu(0x10000000)
    lab.dma_from_edu(0x20000000)  # fills the IOTLB for the page
    assert lab.qt.memread(DST, PAGE) == pattern(4)
    lab.qt.memset(DST, PAGE, 0x5A)
    assert lab.cmd("x-iommulab-unmap", domain=1, ranges=[{"iova": 0x20000000, "size": PAGE}]) == {
        "unmapped": PAGE
    }
    lab.dma_from_edu(0x20000000)
    assert lab.qt.memread(DST, PAGE) == b"\x5a" * PAGE
    assert [x["reason"] for x in faults(lab)] == ["not-present"]


def s1_entry(lab: Lab, pa: int, value: int) -> None:
    lab.qt.memwrite(pa, struct.pack("<Q", value))


class Nested:
    """Parent stage 2 maps IPA x -> PA x + OFF for x in [0, 8 MiB); the
    stage-1 tables live at IPAs 0x10000.. (PA 0x10000 + OFF ..)."""

    OFF = 0x1000000
    ROOT, L3, L2, L1 = 0x10000, 0x11000, 0x12000, 0x13000
    IOVA = 0x7F0040201000  # L4 254, L3 1, L2 1, L1 1

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        paging(lab, 1, (0, 8 << 20, self.OFF, True, True))
        lab.qt.memset(self.OFF + self.ROOT, 4 * PAGE, 0)
        rw = S1_P | S1_R | S1_W
        i = self.IOVA
        s1_entry(lab, self.pa(self.ROOT) + 8 * ((i >> 39) & 511), self.L3 | rw)
        s1_entry(lab, self.pa(self.L3) + 8 * ((i >> 30) & 511), self.L2 | rw)
        s1_entry(lab, self.pa(self.L2) + 8 * ((i >> 21) & 511), self.L1 | rw)
        lab.cmd("x-iommulab-domain-alloc", domain=2, type="nested", parent=1, s1_root=self.ROOT)
        attach(lab, "domain", 2)

    def pa(self, ipa: int) -> int:
        return ipa + self.OFF

    def leaf(self, iova: int, ipa: int, flags: int) -> None:
        s1_entry(self.lab, self.pa(self.L1) + 8 * ((iova >> 12) & 511), ipa | flags)


def test_nested_dma_walks_both_stages(lab: Lab) -> None:
    n = Nested(lab)
    n.leaf(n.IOVA, SRC, S1_P | S1_R)  # read-only at stage 1
    n.leaf(n.IOVA + PAGE, DST, S1_P | S1_R | S1_W)
    lab.qt.memwrite(n.pa(SRC), pattern(5))
    lab.qt.memset(n.pa(DST) - PAGE, 3 * PAGE, 0x5A)
    lab.qt.memset(DST, PAGE, 0x5A)
    lab.dma_to_edu(n.IOVA)
    lab.dma_from_edu(n.IOVA + PAGE)
    assert lab.qt.memread(n.pa(DST), PAGE) == pattern(5)
    assert lab.qt.memread(n.pa(DST) - PAGE, PAGE) == b"\x5a" * PAGE
    assert lab.qt.memread(n.pa(DST) + PAGE, PAGE) == b"\x5a" * PAGE
    assert lab.qt.memread(DST, PAGE) == b"\x5a" * PAGE  # the IPA as a PA: untouched
    lab.dma_from_edu(n.IOVA)  # write to a stage-1 read-only page
    lab.dma_from_edu(n.IOVA + 2 * PAGE)  # no stage-1 leaf
    n.leaf(n.IOVA + 3 * PAGE, 9 << 20, S1_P | S1_R | S1_W)  # output outside stage 2
    lab.dma_from_edu(n.IOVA + 3 * PAGE)
    assert lab.qt.memread(n.pa(SRC), PAGE) == pattern(5)
    got = [(x["stage"], x["reason"], x["domain"]) for x in faults(lab)]
    assert got == [
        ("stage1", "permission", 2),
        ("stage1", "not-present", 2),
        ("stage2", "not-present", 2),
    ]
    t = lab.cmd("x-iommulab-translate", device="edu0", iova=n.IOVA + PAGE + 8, access="write")
    assert t == {"allowed": True, "addr": n.pa(DST) + 8, "read": True, "write": True}


def test_nested_invalidation_stale_before_fresh_after(lab: Lab) -> None:
    n = Nested(lab)
    other = DST + 0x10000
    n.leaf(n.IOVA, DST, S1_P | S1_R | S1_W)
    load_src(lab, pattern(6))
    lab.qt.memset(n.pa(DST), PAGE, 0)
    lab.qt.memset(n.pa(other), PAGE, 0)
    lab.dma_from_edu(n.IOVA)
    assert lab.qt.memread(n.pa(DST), PAGE) == pattern(6)
    # The guest retargets the leaf; the cached translation is still used.
    n.leaf(n.IOVA, other, S1_P | S1_R | S1_W)
    lab.qt.memset(n.pa(DST), PAGE, 0)
    lab.dma_from_edu(n.IOVA)
    assert lab.qt.memread(n.pa(DST), PAGE) == pattern(6)
    assert lab.qt.memread(n.pa(other), PAGE) == bytes(PAGE)
    # A range invalidation elsewhere changes nothing; one covering it does.
    lab.cmd("x-iommulab-invalidate", domain=2, iova=n.IOVA + PAGE, size=PAGE)
    lab.qt.memset(n.pa(DST), PAGE, 0)
    lab.dma_from_edu(n.IOVA)
    assert lab.qt.memread(n.pa(DST), PAGE) == pattern(6)
    lab.cmd("x-iommulab-invalidate", domain=2, iova=n.IOVA, size=PAGE)
    lab.qt.memset(n.pa(DST), PAGE, 0)
    lab.dma_from_edu(n.IOVA)
    assert lab.qt.memread(n.pa(DST), PAGE) == bytes(PAGE)
    assert lab.qt.memread(n.pa(other), PAGE) == pattern(6)
    assert faults(lab) == []


def test_replace_while_mapped(lab: Lab) -> None:
    iova = 0x40000000
    paging(lab, 1, (iova, PAGE, DST, True, True))
    paging(lab, 3, (iova, PAGE, DST + 0x10000, True, True))
    attach(lab, "domain", 1)
    load_src(lab, pattern(7))
    lab.qt.memset(DST, PAGE, 0)
    lab.qt.memset(DST + 0x10000, PAGE, 0)
    lab.dma_from_edu(iova)
    assert lab.qt.memread(DST, PAGE) == pattern(7)
    with pytest.raises(ExecuteError, match="in use"):
        lab.cmd("x-iommulab-domain-free", domain=1)
    attach(lab, "domain", 3)  # replace, no detach in between
    lab.qt.memset(DST, PAGE, 0)
    lab.dma_from_edu(iova)
    assert lab.qt.memread(DST, PAGE) == bytes(PAGE)
    assert lab.qt.memread(DST + 0x10000, PAGE) == pattern(7)
    lab.cmd("x-iommulab-domain-free", domain=1)
    info = lab.cmd("x-iommulab-query")
    assert [d["domain"] for d in info["domains"]] == [3]
    edu = next(d for d in info["devices"] if d.get("id") == "edu0")
    assert (edu["mode"], edu["domain"]) == ("domain", 3)
    assert faults(lab) == []


def test_query_reports_everything(lab: Lab) -> None:
    paging(
        lab,
        1,
        (0, 4 << 20, 0, True, True),
        (4 << 20, 4 << 20, 4 << 20, True, True),
        (1 << 30, PAGE, 0x5000, True, False),
    )
    lab.cmd("x-iommulab-domain-alloc", domain=7, type="nested", parent=1, s1_root=0x8000)
    attach(lab, "domain", 7)
    info = lab.cmd("x-iommulab-query")
    assert info["path"] == "/machine/peripheral/viommu0"
    assert info["default-mode"] == "blocked"
    d1, d7 = info["domains"]
    assert d1 == {
        "domain": 1,
        "type": "paging",
        "ias": 48,
        "devices": 0,
        "children": 1,
        "mappings": [
            {"iova": 0, "size": 8 << 20, "addr": 0, "read": True, "write": True},
            {"iova": 1 << 30, "size": PAGE, "addr": 0x5000, "read": True, "write": False},
        ],
    }
    assert d7 == {
        "domain": 7,
        "type": "nested",
        "ias": 48,
        "parent": 1,
        "s1-root": 0x8000,
        "devices": 1,
        "children": 0,
        "mappings": [],
    }
    edu = next(d for d in info["devices"] if d.get("id") == "edu0")
    assert edu == {
        "device": "/machine/peripheral/edu0",
        "id": "edu0",
        "requester-id": 0x18,
        "mode": "domain",
        "domain": 7,
    }


def test_default_mode_property(lab_factory: Any) -> None:
    lab = lab_factory([",default-mode=bypass"])
    load_src(lab, pattern(8))
    lab.dma_from_edu(DST)
    assert lab.qt.memread(DST, PAGE) == pattern(8)
    assert lab.cmd("x-iommulab-query")["default-mode"] == "bypass"


def mapping(
    iova: int, size: int, addr: int, read: bool = True, write: bool = True
) -> dict[str, Any]:
    """One entry of x-iommulab-map's mappings."""
    return {"iova": iova, "size": size, "addr": addr, "read": read, "write": write}


BAD_INPUT: list[tuple[str, dict[str, Any], str]] = [
    ("x-iommulab-map", {"domain": 1, "mappings": [mapping(0x1000, 0x1000, 0x1800)]}, "aligned"),
    (
        "x-iommulab-map",
        {"domain": 1, "mappings": [mapping(0x100000, 0x1000, 0), mapping(0x1000, 0, 0)]},
        "zero",
    ),
    (
        "x-iommulab-map",
        {"domain": 1, "mappings": [mapping(0xFFFFFFFFFFFFF000, 0x2000, 0)]},
        "wraps",
    ),
    (
        "x-iommulab-map",
        {"domain": 1, "mappings": [mapping(1 << 48, 0x1000, 0)]},
        "input address size",
    ),
    (
        "x-iommulab-map",
        {"domain": 1, "mappings": [mapping(0x100000, 0x1000, 0, read=False, write=False)]},
        "neither",
    ),
    (
        "x-iommulab-map",
        {"domain": 1, "mappings": [mapping(0x100000, 0x1000, 0), mapping(0x20000000, 0x1000, 0)]},
        "existing",
    ),
    (
        "x-iommulab-map",
        {"domain": 1, "mappings": [mapping(0x100000, 0x2000, 0), mapping(0x101000, 0x1000, 0)]},
        "same request",
    ),
    (
        "x-iommulab-map",
        {"domain": 2, "mappings": [mapping(0x100000, 0x1000, 0)]},
        "not a paging domain",
    ),
    ("x-iommulab-map", {"domain": 9, "mappings": [mapping(0x100000, 0x1000, 0)]}, "does not exist"),
    ("x-iommulab-map", {"domain": 1, "mappings": []}, "empty"),
    (
        "x-iommulab-unmap",
        {
            "domain": 1,
            "ranges": [{"iova": 0x20000000, "size": 0x1000}, {"iova": 0x800, "size": 0x1000}],
        },
        "aligned",
    ),
    (
        "x-iommulab-unmap",
        {"domain": 1, "ranges": [{"iova": 1 << 47, "size": 1 << 48}]},
        "input address size",
    ),
    ("x-iommulab-domain-alloc", {"domain": 1, "type": "paging"}, "already exists"),
    ("x-iommulab-domain-alloc", {"domain": 5, "type": "paging", "ias": 64}, "ias"),
    ("x-iommulab-domain-alloc", {"domain": 5, "type": "paging", "parent": 1}, "nested"),
    ("x-iommulab-domain-alloc", {"domain": 5, "type": "nested", "parent": 1}, "s1-root"),
    (
        "x-iommulab-domain-alloc",
        {"domain": 5, "type": "nested", "parent": 2, "s1-root": 0},
        "not a paging",
    ),
    (
        "x-iommulab-domain-alloc",
        {"domain": 5, "type": "nested", "parent": 1, "s1-root": 0x10},
        "aligned",
    ),
    (
        "x-iommulab-domain-alloc",
        {"domain": 5, "type": "nested", "parent": 8, "s1-root": 0},
        "does not exist",
    ),
    ("x-iommulab-domain-free", {"domain": 1}, "in use"),
    (
        "x-iommulab-unmap",
        {"domain": 2, "ranges": [{"iova": 0, "size": 0x1000}]},
        "not a paging domain",
    ),
    ("x-iommulab-domain-free", {"domain": 9}, "no such domain"),
    ("x-iommulab-attach", {"device": "edu0", "mode": "domain"}, "needs"),
    ("x-iommulab-attach", {"device": "edu0", "mode": "blocked", "domain": 1}, "only valid"),
    ("x-iommulab-attach", {"device": "edu0", "mode": "domain", "domain": 9}, "does not exist"),
    ("x-iommulab-attach", {"device": "nosuch", "mode": "bypass"}, "not a PCI device"),
    ("x-iommulab-attach", {"device": "viommu0", "mode": "bypass"}, "itself"),
    (
        "x-iommulab-attach",
        {"iommu": "edu0", "device": "edu0", "mode": "bypass"},
        "not an iommulab-viommu",
    ),
    ("x-iommulab-invalidate", {"iova": 0x1000}, "together"),
    ("x-iommulab-invalidate", {"iova": 0x1000, "size": 0x10}, "aligned"),
    ("x-iommulab-invalidate", {"domain": 9}, "does not exist"),
    ("x-iommulab-translate", {"device": "nosuch", "iova": 0, "access": "read"}, "not a PCI device"),
]


@pytest.mark.parametrize(
    ("cmd", "args", "message"), BAD_INPUT, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_INPUT)]
)
def test_bad_input_is_refused_and_changes_nothing(
    lab: Lab, cmd: str, args: dict[str, Any], message: str
) -> None:
    paging(lab, 1, (0x20000000, PAGE, DST, True, True))
    lab.cmd("x-iommulab-domain-alloc", domain=2, type="nested", parent=1, s1_root=0)
    attach(lab, "domain", 1)
    before = lab.cmd("x-iommulab-query")
    with pytest.raises(ExecuteError, match=message):
        lab.cmd(cmd, **args)
    assert lab.cmd("x-iommulab-query") == before
    # and the device still works as before
    load_src(lab, pattern(9))
    lab.dma_from_edu(0x20000000)
    assert lab.qt.memread(DST, PAGE) == pattern(9)


def test_fault_events_are_rate_limited_but_all_counted(lab: Lab) -> None:
    lab.qt.memset(0x400000, 40 * PAGE, 0x5A)
    for i in range(40):  # blocked: 40 faults on 40 pages
        lab.dma_from_edu(0x400000 + i * PAGE, 16)
    assert lab.qt.memread(0x400000, 40 * PAGE) == b"\x5a" * (40 * PAGE)
    c = lab.cmd("x-iommulab-query-counters")  # events are sent before replies
    events = lab.events("X_IOMMULAB_FAULT")
    assert c["faults"] == 40
    # at most 10 per second are sent, the first 10 always; none is lost
    # from the count: sent + suppressed == faults
    assert len(events) >= 10
    assert len(events) + c["events-suppressed"] == 40
    sent_suppressed = sum(e["data"]["suppressed"] for e in events)
    assert sent_suppressed <= c["events-suppressed"]
    assert [e["data"]["iova"] for e in events[:10]] == [0x400000 + i * PAGE for i in range(10)]
    assert len(faults(lab)) == 40


def test_stage1_table_in_mmio_is_a_walk_error(lab: Lab) -> None:
    """A guest pointing a stage-1 table at MMIO (here edu's own BAR, through
    stage 2) gets a walk error; device code is never run from the walk."""
    n = Nested(lab)
    lab.cmd(
        "x-iommulab-map",
        domain=1,
        mappings=[
            {"iova": 0x900000, "size": PAGE, "addr": 0xFE000000, "read": True, "write": True}
        ],
    )
    s1_entry(lab, n.pa(n.L2) + 8 * ((n.IOVA >> 21) & 511), 0x900000 | S1_P | S1_R | S1_W)
    lab.qt.memset(DST, PAGE, 0x5A)
    lab.dma_from_edu(n.IOVA)
    assert [(x["stage"], x["reason"]) for x in faults(lab)] == [("stage1", "walk-error")]
    assert lab.qt.readl(0xFE000000) == 0x010000ED  # edu still answers


def test_migration_is_blocked_with_a_reason(lab: Lab) -> None:
    with pytest.raises(ExecuteError, match="programmed by the control plane"):
        lab.qmp.cmd("migrate", uri="exec:cat > /dev/null")


def test_reset_keeps_domains_and_drops_cached_translations(lab: Lab) -> None:
    paging(lab, 1, (0x20000000, PAGE, DST, True, True))
    attach(lab, "domain", 1)
    load_src(lab, pattern(10))
    lab.dma_from_edu(0x20000000)
    assert lab.cmd("x-iommulab-query-counters")["iotlb-entries"] > 0
    before = lab.cmd("x-iommulab-query")
    lab.qmp.cmd("system_reset")
    assert lab.cmd("x-iommulab-query") == before
    assert lab.cmd("x-iommulab-query-counters")["iotlb-entries"] == 0


def test_translate_takes_a_byte_address(lab: Lab) -> None:
    """x-iommulab-translate is a debug walk of one byte address: the bits below
    the leaf (4 KiB page, 2 MiB block) are carried into addr, as a DMA's are."""
    mib2 = 2 << 20
    paging(
        lab,
        1,
        (0x20000000, PAGE, DST, True, False),  # a 4 KiB page
        (0x40000000, mib2, 0x800000, True, True),  # a 2 MiB block
    )
    attach(lab, "domain", 1)

    def tr(iova: int, access: str = "read") -> dict[str, Any]:
        res: dict[str, Any] = lab.cmd(
            "x-iommulab-translate", device="edu0", iova=iova, access=access
        )
        return res

    assert tr(0x20000000 + 0x123) == {"allowed": True, "addr": DST + 0x123, "read": True,
                                      "write": False}  # fmt: skip
    assert tr(0x40000000 + 0x12345, "write")["addr"] == 0x800000 + 0x12345
    assert tr(0x40000000 + mib2 - 1)["addr"] == 0x800000 + mib2 - 1
    # refusals keep their stage and reason at any byte
    assert tr(0x20000000 + 0xFFF, "write") == {
        "allowed": False,
        "stage": "stage2",
        "reason": "permission",
    }
    assert tr(0x20001001)["reason"] == "not-present"
    assert tr((1 << 64) - 1)["reason"] == "address-size"
    # debug only: nothing counted, nothing queued
    assert lab.cmd("x-iommulab-query-counters")["faults"] == 0
    assert faults(lab) == []
