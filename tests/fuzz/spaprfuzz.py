"""Randomized sPAPR TCE hypercalls and DDW RTAS calls, with read-back.

H_PUT_TCE, H_PUT_TCE_INDIRECT, H_STUFF_TCE, H_GET_TCE and
ibm,query/create/remove/reset-pe-dma-window on a pseries under qtest, with
arguments that are plausible (known LIOBNs and BUIDs, IOBAs inside a
window, TCEs of guest RAM) or hostile (unknown LIOBNs and BUIDs, misaligned
or out-of-window IOBAs, huge page shifts, window sizes and counts near and
past the limits, short argument lists).  Before each call the TCEs it may
touch are read (``x-iommulab-spapr-read-tces``, a bounded slice at each end
of the range) with the lab's snapshot (windows, their TCEs in use, the
policy); a call that returned an error must leave both as they were, a
TCE write that succeeded must read back, a created window must be listed.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from typing import Any

from fuzzlab import Finding, Lab, Step, diff

from pyctl.qemu.pseries_qtest import (
    H_GET_TCE,
    H_PUT_TCE,
    H_PUT_TCE_INDIRECT,
    H_STUFF_TCE,
    TCE_LIST,
)

U64 = (1 << 64) - 1
SLICE = 256  # TCEs read back at each end of a touched range
RAM_PAGES = (0x5000000, 0x5001000, 0x6000000, 0x10000000)


class SpaprFuzzer:
    def __init__(self, lab: Lab, rnd: random.Random) -> None:
        self.lab = lab
        self.rnd = rnd
        self.ram = lab.pseries.ram
        self.phbs: list[dict[str, Any]] = lab.qmp("x-iommulab-spapr-query-phbs")

    # --- what exists ---
    def windows(self) -> list[dict[str, Any]]:
        return [w for p in self.phbs for w in p["windows"]]

    def window(self, liobn: int) -> dict[str, Any] | None:
        return next((w for w in self.windows() if w["liobn"] == liobn), None)

    def read(self, liobn: int, first: int, count: int) -> list[str]:
        """Two bounded slices of the TCEs [first, first+count) of a window, base64."""
        w = self.window(liobn)
        if w is None or count <= 0 or first >= w["entries"]:
            return []
        end = min(first + count, w["entries"])
        spans = [(first, min(end, first + SLICE))]
        if end - SLICE > first + SLICE:
            spans.append((end - SLICE, end))
        return [
            self.lab.qmp("x-iommulab-spapr-read-tces", liobn=liobn, start=s, count=e - s)["data"]
            for s, e in spans
        ]

    # --- arguments ---
    def liobn(self, hostile: bool) -> int:
        known = [w["liobn"] for w in self.windows()]
        every = [lb for p in self.phbs for lb in p["liobns"]]
        if not hostile and known:
            return self.rnd.choice(known)
        return self.rnd.choice([*every, 0, 0x80000002, 0x800000FF, 0xFFFFFFFF, 1 << 32, U64])

    def ioba(self, liobn: int, hostile: bool) -> tuple[int, int]:
        """An IOBA and its TCE index in the window (index -1: none)."""
        w = self.window(liobn)
        if w is None:
            return self.rnd.choice([0, 0x1000, 1 << 59]), -1
        page = 1 << w["page-shift"]
        if not hostile:
            i = self.rnd.choice([0, 1, self.rnd.randrange(w["entries"]), w["entries"] - 1])
            return w["bus-offset"] + i * page, i
        ioba = self.rnd.choice(
            [
                w["bus-offset"] + w["size"],
                w["bus-offset"] - page,
                w["bus-offset"] + 1,
                w["bus-offset"] + page // 2,
                U64 & ~(page - 1),
                1 << 63,
                0,
            ]
        )
        return ioba, -1

    def tce(self, hostile: bool) -> int:
        r = self.rnd
        if not hostile:
            return r.choice(RAM_PAGES) | r.randint(0, 3)
        return r.choice([self.ram, 1 << 50, U64, 0x5000800 | 3, 4, 0x5000000 | 0xFFC, 1 << 63])

    def count(self, w: dict[str, Any] | None, first: int, hostile: bool) -> int:
        if not hostile:
            return self.rnd.randint(1, 512)
        left = (w["entries"] - first) if w is not None and first >= 0 else 1
        return self.rnd.choice([0, 513, left, left + 1, 1 << 31, 1 << 32, U64])

    # --- one call ---
    def step(self) -> None:
        r = self.rnd
        hostile = r.random() < 0.4
        op = r.choice(
            [
                "put",
                "put",
                "indirect",
                "stuff",
                "stuff",
                "get",
                "query",
                "create",
                "remove",
                "reset",
                "host-put",
            ]
        )
        before = self.lab.snap or self.lab.snapshot()
        self.phbs = json.loads(before)["phbs"]  # QMP calls in the stream change windows too
        if op in ("query", "create", "remove", "reset"):
            self.rtas(op, hostile, before)
        elif op == "host-put":
            self.host_put(hostile, before)
        else:
            self.tce_call(op, hostile, before)

    def _changed(self, before: str, what: str) -> None:
        after = self.lab.snapshot()
        self.lab.snap = after
        if after != before:
            raise Finding("divergence", f"{what} changed the state: {diff(before, after)}")

    def tce_call(self, op: str, hostile: bool, before: str) -> None:
        lab, r = self.lab, self.rnd
        liobn = self.liobn(hostile and r.random() < 0.5)
        ioba, index = self.ioba(liobn, hostile and r.random() < 0.5)
        w = self.window(liobn)
        if op == "get":
            out = lab.hcall(H_GET_TCE, liobn, ioba)
            if out.ok and index >= 0:
                got = struct.unpack(">Q", base64.b64decode(self.read(liobn, index, 1)[0]))[0]
                if out.value[1] != got:
                    raise Finding("divergence", f"H_GET_TCE {out.value[1]:#x}, read-tces {got:#x}")
            self._changed(before, "H_GET_TCE")
            return
        count = 1
        tces: list[int] = []
        if op == "put":
            tce = self.tce(hostile and r.random() < 0.5)
            step_args: list[int] = [H_PUT_TCE, liobn, ioba, tce]
            tces = [tce]
        elif op == "stuff":
            tce = self.tce(hostile and r.random() < 0.3) if r.random() < 0.7 else 0
            count = self.count(w, index, hostile and r.random() < 0.5)
            step_args = [H_STUFF_TCE, liobn, ioba, tce, count]
            tces = [tce] * min(count, SLICE)
        else:
            count = self.count(w, index, hostile and r.random() < 0.5)
            n = min(count, 512) if count < 1 << 20 else 4
            tces = [self.tce(hostile and r.random() < 0.1) for _ in range(n)]
            lab.write(TCE_LIST, b"".join(struct.pack(">Q", t) for t in tces))
            before = lab.snapshot()  # the list write is guest memory, not lab state
            lst = (
                TCE_LIST
                if not hostile or r.random() < 0.7
                else r.choice([TCE_LIST + 4, self.ram, U64 & ~0xFFF])
            )
            step_args = [H_PUT_TCE_INDIRECT, liobn, ioba, lst, count]
        first = index if index >= 0 else 0
        span = min(count, w["entries"] - first) if w is not None and index >= 0 else 0
        tces_before = self.read(liobn, first, span) if index >= 0 else []
        out = lab.hcall(*step_args)
        name = {
            H_PUT_TCE: "H_PUT_TCE",
            H_STUFF_TCE: "H_STUFF_TCE",
            H_PUT_TCE_INDIRECT: "H_PUT_TCE_INDIRECT",
        }[step_args[0]]
        if not out.ok:
            if self.read(liobn, first, span) != tces_before:
                raise Finding("divergence", f"{name} returned {out.value[0]} but wrote TCEs")
            self._changed(before, f"{name} returning {out.value[0]}")
            return
        listed = op != "indirect" or (step_args[3] == TCE_LIST and count <= 512)
        if index >= 0 and listed:
            got = self.read(liobn, first, min(span, SLICE))
            raw = base64.b64decode(got[0]) if got else b""
            vals = list(struct.unpack(f">{len(raw) // 8}Q", raw))
            want = tces[: len(vals)]
            if vals != want:
                got_s, want_s = [hex(v) for v in vals[:4]], [hex(v) for v in want[:4]]
                raise Finding("divergence", f"{name} succeeded, reads {got_s}, wrote {want_s}")
        self.lab.snap = None

    def host_put(self, hostile: bool, before: str) -> None:
        """x-iommulab-spapr-put-tces (the host side's bulk write): all or nothing."""
        r = self.rnd
        liobn = self.liobn(hostile and r.random() < 0.5)
        _, index = self.ioba(liobn, hostile and r.random() < 0.5)
        w = self.window(liobn)
        start = index if index >= 0 else r.choice([0, 1 << 40, U64])
        n = r.randint(1, 64) if not hostile else r.choice([0, 1, 64, 600])
        tces = [self.tce(hostile and r.random() < 0.1) if r.random() < 0.8 else 0 for _ in range(n)]
        span = min(n, w["entries"] - start) if w is not None and 0 <= start < w["entries"] else 0
        tces_before = self.read(liobn, start, span)
        args = {"liobn": liobn, "start": start, "tces": tces}
        out = self.lab.run(Step("qmp", "x-iommulab-spapr-put-tces", args))
        if not out.ok:
            self.lab.check_refusal(Step("qmp", "x-iommulab-spapr-put-tces", args), out)
            if self.read(liobn, start, span) != tces_before:
                raise Finding("divergence", f"put-tces refused ({out.error}) but wrote TCEs")
            self._changed(before, f"put-tces refused ({out.error})")
            return
        got = self.read(liobn, start, min(span, SLICE))
        raw = base64.b64decode(got[0]) if got else b""
        if list(struct.unpack(f">{len(raw) // 8}Q", raw)) != tces[: len(raw) // 8] or span != n:
            raise Finding("divergence", f"put-tces of {n} TCEs at {start} does not read back")
        self.lab.snap = None

    def rtas(self, op: str, hostile: bool, before: str) -> None:
        lab, r = self.lab, self.rnd
        p = r.choice(self.phbs)
        buid = p["buid"] if not hostile or r.random() < 0.5 else r.choice([0, 1 << 60, U64])
        cfg = r.choice([0, 3 << 11, 1 << 16]) if not hostile else r.choice([0xFFFFFFFF, 0x100])
        addr = [cfg, buid >> 32, buid & 0xFFFFFFFF]
        if hostile and r.random() < 0.2:
            addr = addr[: r.randint(0, 2)]  # too few arguments
        if op == "query":
            out = lab.rtas("ibm,query-pe-dma-window", addr, 6)
        elif op == "create":
            shift = r.choice([0, 11, 28, 34, 64, 255] if hostile else [12, 16, 21, 24])
            wshift = r.choice([0, 12, 43, 48, 63, 64, 0xFFFF]) if hostile else r.randint(20, 40)
            out = lab.rtas("ibm,create-pe-dma-window", [*addr, shift, wshift], 4)
        elif op == "remove":
            out = lab.rtas("ibm,remove-pe-dma-window", [self.liobn(hostile)], 1)
        else:
            out = lab.rtas("ibm,reset-pe-dma-window", addr, 1)
        if op == "query" or not out.ok:
            self._changed(before, f"{op} (RTAS status {out.value[0]})")
            return
        if op == "create":
            phbs = lab.qmp("x-iommulab-spapr-query-phbs")
            if not any(w["liobn"] == out.value[1] for q in phbs for w in q["windows"]):
                raise Finding("divergence", f"created window {out.value[1]:#x} is not listed")
        self.lab.snap = None
