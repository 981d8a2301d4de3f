"""Schema-driven QMP fuzzing of every ``x-iommulab-*`` command.

The commands and their argument types come from ``query-qmp-schema`` (no
hand list): each member gets a value of its type, chosen from pools that
are plausible for its name (known ids and QOM paths, aligned and misaligned
addresses, sizes around limits, values remembered from earlier answers),
sometimes hostile (long strings, large lists, wrong types).  A quarter of
the calls mutate an accepted call (one field flipped, a member dropped or
added, a value of the wrong type).  Every refused call is checked by the
oracle in fuzzlab (GenericError, a message, nothing changed); with
``reset_every`` a ``system_reset`` lands in the stream and the programmed
state must survive it with an empty IOTLB.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from fuzzlab import EDU_BUF, Finding, Lab, Step, diff, free_domain, paths

from pyctl.qemu.pseries_qtest import H_PUT_TCE, LIOBN0

#: the inline list of the commands with bulk forms (docs/qmp.md "Bulk payloads")
SOURCES = {"x-iommulab-map": "mappings", "x-iommulab-unmap": "ranges",
           "x-iommulab-invalidate": "ranges"}  # fmt: skip
#: owner tokens of the stream (a claim by one refuses the other's changes)
OWNERS = ["fuzz-a", "fuzz-b", "fuzz-a"]

U64 = 1 << 64
ADDRS = [
    0,
    0x1000,
    0x200000,
    0x40000000,
    0x5000000,
    0xFEE00000,
    1 << 32,
    1 << 47,
    1 << 48,
    1 << 57,
    U64 - 0x1000,
    U64 - 1,
]
SIZES = [0, 0x1000, 0x2000, 0x200000, 0x40000000, 1 << 32, 1 << 48, U64 - 0x1000, 0xFFF, 0x1001]
COUNTS = [
    0,
    1,
    2,
    511,
    512,
    513,
    4096,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    1 << 24,
    1 << 31,
    1 << 32,
    1 << 37,
    (1 << 63) - 1,
]
PSERIES_RAM, PSERIES_BUS = 0x5000000, 0  # program(): an IPA and its TCE's bus address
#: read-tces counts above this are not asked by default, to keep the run fast: an answer of
#: 2^20 TCEs is 11 MB of base64 (the client's READ_LIMIT holds it); --big-answers asks anyway
CLIENT_MAX_TCES = 1 << 19
SHIFTS = [0, 1, 11, 12, 13, 16, 21, 24, 28, 34, 35, 40, 48, 63, 64]
IAS = [0, 12, 20, 21, 32, 39, 48, 57, 58, 64]
SMALL = [0, 1, 2, 3, 4, 7, 255, 4095, 4096, (1 << 31), (1 << 32) - 1]
HOSTILE_INT = [-1, -(1 << 63), U64, 1 << 70]

#: member names whose values are addresses, sizes, counts or page shifts
ADDR_NAMES = {"iova", "addr", "s1-root", "bus-offset", "dma64-offset"}
SIZE_NAMES = {"size", "default-window-size", "table-memory-limit"}
COUNT_NAMES = {"count", "start", "max-tces"}
SHIFT_NAMES = {"page-shift", "page-shifts"}


@dataclass
class Schema:
    """The lab's commands: name -> [(member, type tree, optional)]."""

    commands: dict[str, list[tuple[str, Any, bool]]]

    @classmethod
    def read(cls, lab: Lab) -> Schema:
        entries = lab.qmp("query-qmp-schema")
        by = {e["name"]: e for e in entries}

        def tree(name: str) -> Any:
            e = by[name]
            mt = e["meta-type"]
            if mt == "builtin":
                return ("builtin", e["json-type"])
            if mt == "enum":
                return ("enum", e["values"])
            if mt == "array":
                return ("array", tree(e["element-type"]))
            if mt == "object":
                return (
                    "object",
                    [(m["name"], tree(m["type"]), "default" in m) for m in e["members"]],
                )
            if mt == "alternate":
                return ("alternate", [tree(m["type"]) for m in e["members"]])
            raise ValueError(f"schema type {name}: {mt}")

        cmds = {}
        for e in entries:
            if e["meta-type"] == "command" and e["name"].startswith("x-iommulab-"):
                cmds[e["name"]] = tree(e["arg-type"])[1]
        return cls(cmds)


@dataclass
class Memory:
    """Values remembered from the lab's answers."""

    names: list[str] = field(default_factory=list)
    domains: list[int] = field(default_factory=list)
    iovas: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    liobns: list[int] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    phbs: list[str] = field(default_factory=list)

    def learn(self, snap: dict[str, Any]) -> None:
        q = snap["query"]
        self.domains = [d["domain"] for d in q["domains"]]
        maps = [m for d in q["domains"] for m in d["mappings"]]
        self.iovas = sorted({m["iova"] for m in maps} | {m["iova"] + m["size"] for m in maps})[:64]
        self.sizes = sorted({m["size"] for m in maps})[:32]
        self.devices = [d["device"] for d in q["devices"]]
        self.phbs = [p["path"] for p in snap.get("phbs", [])]
        for p in snap.get("phbs", []):
            self.liobns = sorted(set(self.liobns) | set(p["liobns"]))


class QmpFuzzer:
    def __init__(
        self, lab: Lab, rnd: random.Random, reset_every: int = 0, big_answers: bool = False
    ) -> None:
        self.lab = lab
        self.big_answers = big_answers
        self.rnd = rnd
        self.reset_every = reset_every
        self.schema = Schema.read(lab)
        self.mem = Memory()
        ids = [lab.iommu, *lab.requesters]
        paths = [f"/machine/peripheral/{i}" for i in ids]
        phb_paths = [p["path"] for p in lab.phbs]
        self.mem.names = [
            *ids,
            *paths,
            *phb_paths,
            "nosuch",
            "",
            "/machine",
            "/machine/peripheral",
            "/machine/peripheral/nosuch",
            "viommu0/",
            "edu0\n",
        ]
        self.hostility = 0.1
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        self.mem.learn(json.loads(lab.snapshot()))

    # --- values ---
    def _hostile(self) -> bool:
        return self.rnd.random() < self.hostility

    def _int(self, name: str) -> int:
        r, m, h = self.rnd, self.mem, self._hostile()
        if r.random() < 0.02:
            return r.choice(HOSTILE_INT)
        if name in ("domain", "parent"):
            if h:
                return r.choice(SMALL)
            return r.choice(m.domains) if m.domains and r.random() < 0.7 else r.randint(1, 16)
        if name == "liobn":
            return r.choice([*SMALL, 0x80000002]) if h or not m.liobns else r.choice(m.liobns)
        if name in ADDR_NAMES:
            if not h:
                if m.iovas and r.random() < 0.3:
                    return r.choice(m.iovas)
                return r.randrange(0, 1 << r.choice([24, 30, 36]), r.choice([0x1000, 0x200000]))
            base = r.choice(m.iovas if m.iovas and r.random() < 0.4 else ADDRS)
            return (base + r.choice([0, 0, 1, 0x800, -0x1000, 0x1000])) % U64
        if name in SIZE_NAMES:
            if not h:
                return r.choice([0x1000, 0x2000, 0x10000, 0x200000, 0x40000000, *m.sizes])
            return r.choice(SIZES)
        if name in COUNT_NAMES:
            n = r.randint(0, 512) if not h else r.choice(COUNTS)
            if name == "count" and not self.big_answers and n > CLIENT_MAX_TCES:
                return CLIENT_MAX_TCES  # see CLIENT_MAX_TCES
            return n
        if name in SHIFT_NAMES:
            return r.choice([12, 16, 21, 24]) if not h else r.choice(SHIFTS)
        if name == "ias":
            return r.choice([39, 48]) if not h else r.choice(IAS)
        return r.choice(SMALL[:4]) if not h else r.choice(SMALL)

    def _str(self, name: str) -> str:
        r, lab = self.rnd, self.lab
        if r.random() < 0.02:
            return r.choice(self.mem.names) * r.randint(100, 400)  # a few KiB
        if name in ("owner", "to") and not self._hostile():
            return r.choice(OWNERS)
        if name == "data" and not self._hostile():
            return self._packed()
        if not self._hostile():
            if name == "iommu":
                if r.random() < 0.85:
                    return lab.iommu
                return r.choice([f"/machine/peripheral/{lab.iommu}", *self.mem.phbs])
            if name == "device":
                return r.choice(lab.requesters + self.mem.devices)
        return r.choice(self.mem.names + self.mem.devices)

    def _packed(self) -> str:
        """base64 of 1-4 plausible records (docs/qmp.md "Bulk payloads"): 4 words can be
        read as a mapping or as two ranges."""
        words: list[int] = []
        for _ in range(self.rnd.randint(1, 4)):
            words += [
                self._int("iova"),
                self._int("size"),
                self._int("addr"),
                self.rnd.choice([1, 2, 3, 3, 4]),
            ]
        words = [w % (1 << 64) for w in words]  # hostile ints wrap to 64 bits
        return base64.b64encode(struct.pack(f"<{len(words)}Q", *words)).decode()

    def value(self, name: str, t: Any) -> Any:
        kind = t[0]
        if kind == "builtin":
            jt = t[1]
            if jt == "int":
                return self._int(name)
            if jt == "string":
                return self._str(name)
            if jt == "boolean":
                return self.rnd.random() < 0.5
            if jt == "number":
                return self.rnd.random() * 1e6
            return None
        if kind == "enum":
            return self.rnd.choice(t[1]) if not self._hostile() else "bogus"
        if kind == "array":
            p = self.rnd.random() if self._hostile() else 0.5
            n = 0 if p < 0.08 else self.rnd.randint(1, 3) if p < 0.9 else self.rnd.randint(4, 64)
            if p > 0.98:
                n = self.rnd.randint(500, 2000)
            return [self.value(name, t[1]) for _ in range(n)]
        if kind == "object":
            return self.obj(t[1])
        if kind == "alternate":
            return self.value(name, self.rnd.choice(t[1]))
        raise ValueError(kind)

    def obj(self, members: list[tuple[str, Any, bool]]) -> dict[str, Any]:
        p = 0.5 if self.hostility > 0.1 else 0.2
        return {n: self.value(n, t) for n, t, opt in members if not opt or self.rnd.random() < p}

    def wrong(self, v: Any) -> Any:
        """A value of another JSON type."""
        options: list[Any] = [None, "0x1000", 4096, True, [], {}, [v], 1.5]
        return self.rnd.choice([o for o in options if type(o) is not type(v)])

    def mutate(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        members = self.schema.commands[name]
        a = copy.deepcopy(args)
        how = self.rnd.choice(["flip", "flip", "drop", "extra", "wrong", "inner"])
        keys = list(a)
        if how == "flip" and members:
            n, t, _ = self.rnd.choice(members)
            a[n] = self.value(n, t)
        elif how == "drop" and keys:
            del a[self.rnd.choice(keys)]
        elif how == "extra":
            a[self.rnd.choice(["x-bogus", "iommu", "device", "domain", "liobn"])] = self._int("x")
        elif how == "wrong" and keys:
            k = self.rnd.choice(keys)
            a[k] = self.wrong(a[k])
        elif how == "inner":
            lists = [
                k for k in keys if isinstance(a[k], list) and a[k] and isinstance(a[k][0], dict)
            ]
            if lists:
                k = self.rnd.choice(lists)
                el = self.rnd.choice(a[k])
                f = self.rnd.choice(list(el) or ["iova"])
                el[f] = self.wrong(el.get(f)) if self.rnd.random() < 0.3 else self._int(f)
        return a

    # --- one call ---
    def next_call(self) -> tuple[str, dict[str, Any]]:
        # half the calls plausible (few hostile values), half hostile
        self.hostility = 0.03 if self.rnd.random() < 0.5 else 0.3
        if self.accepted and self.rnd.random() < 0.25:
            name, args = self.rnd.choice(self.accepted)
            return name, self.mutate(name, args)
        names = sorted(self.schema.commands)
        # on q35 the sPAPR commands only have their stub's refusal to test
        weights = [0.2 if self.lab.target == "q35" and "spapr" in n else 1.0 for n in names]
        name = self.rnd.choices(names, weights)[0]
        return name, self._one_source(name, self.obj(self.schema.commands[name]))

    def _one_source(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Most calls of a command with bulk forms give exactly one (inline or data), as a
        control plane would; the rest keep whatever combination the schema drew."""
        key = SOURCES.get(name)
        if key is None or self._hostile() or self.rnd.random() < 0.2:
            return args
        for k in (key, "data", "fd", "count"):
            args.pop(k, None)
        members = {n: t for n, t, _ in self.schema.commands[name]}
        pick = self.rnd.choice([key, key, "data"])
        args[pick] = self.value(pick, members[pick])
        if name == "x-iommulab-invalidate":
            args.pop("iova", None)
            args.pop("size", None)
        return args

    def step(self) -> None:
        lab = self.lab
        if self.reset_every and self.rnd.randrange(self.reset_every) == 0:
            self.reset()
            return
        if self.rnd.random() < 0.05:
            self.traffic()
            return
        name, args = self.next_call()
        if name == "x-iommulab-spapr-read-tces" and not self.big_answers:
            args.setdefault("count", CLIENT_MAX_TCES)  # the default is the whole window
        step = Step("qmp", name, args)
        before = lab.snap or lab.snapshot()
        out = lab.run(step)
        after = lab.snapshot()
        if out.ok:
            self.accepted = [*self.accepted[-63:], (name, args)]
        else:
            lab.check_refusal(step, out)
            if after != before:
                raise Finding(
                    "divergence",
                    f"refused {step.brief()} ({out.error}) changed the "
                    f"state: {diff(before, after)}",
                )
        lab.snap = after
        self.mem.learn(json.loads(after))

    def traffic(self) -> None:
        """edu0 reads from an IOVA its domain maps (else a remembered or wild one): fills
        the IOTLB, or faults; the programmed state stays."""
        before = self.lab.snap or self.lab.snapshot()
        q = json.loads(before)["query"]
        me = "s2" if self.lab.target == "pseries" else "edu0"
        dev = next((d for d in q["devices"] if d.get("id") == me), {})
        dom = next((d for d in q["domains"] if d["domain"] == dev.get("domain")), None)
        readable = [m["iova"] for m in (dom or {}).get("mappings", []) if m["read"]]
        if self.lab.target == "pseries":
            iova = PSERIES_BUS  # where program() put a TCE
        elif readable and self.rnd.random() < 0.9:
            iova = self.rnd.choice(readable)
        else:
            iova = self.rnd.choice(self.mem.iovas or [0]) if self.rnd.random() < 0.9 else 1 << 40
        self.lab.dma(iova, EDU_BUF, to_memory=False)
        after = self.lab.snapshot()
        self.lab.snap = after
        if paths(json.loads(before)["query"], json.loads(after)["query"]):
            raise Finding(
                "divergence", f"a DMA changed the programmed state: {diff(before, after)}"
            )

    def program(self) -> None:
        """A fresh domain mapping 16 KiB of RAM, edu0 (pseries: the PHB, s2) attached to it,
        so that traffic fills the IOTLB; refusals here are checked like any other."""
        lab = self.lab
        lab.release_owners()
        dom = free_domain(self.mem.domains, 2000)
        pseries = lab.target == "pseries"
        m = {
            "iova": PSERIES_RAM if pseries else 0x100000,
            "size": 0x4000,
            "addr": PSERIES_RAM if pseries else 0x5000000,
            "read": True,
            "write": True,
        }
        for name, args in (
            ("x-iommulab-domain-alloc", {"domain": dom, "type": "paging"}),
            ("x-iommulab-map", {"domain": dom, "mappings": [m]}),
            (
                "x-iommulab-attach",
                {"device": "s2" if pseries else "edu0", "mode": "domain", "domain": dom},
            ),
        ):
            out = lab.run(Step("qmp", name, {"iommu": lab.iommu, **args}))
            if not out.ok:
                lab.check_refusal(Step("qmp", name, args), out)
        if pseries:  # the guest's default window back (the stream may have removed it)
            lab.run(Step("qmp", "x-iommulab-spapr-set-blocked", {"phb": 0, "blocked": False}))
            lab.run(Step("qmp", "x-iommulab-spapr-window-reset", {"phb": 0}))
            lab.hcall(H_PUT_TCE, LIOBN0, PSERIES_BUS, PSERIES_RAM | 3)
        lab.snap = lab.snapshot()
        self.mem.learn(json.loads(lab.snap))

    def reset(self) -> None:
        """system_reset: what the control plane programmed stays, the IOTLB is empty."""
        if self.rnd.random() < 0.5:
            self.program()
            self.traffic()
        before = json.loads(self.lab.snap or self.lab.snapshot())
        if before["counters"]["iotlb-entries"]:
            self.lab.stats.resets_with_iotlb += 1
        self.lab.run(Step("reset"))
        after_s = self.lab.snapshot()
        after = json.loads(after_s)
        kept = {"query": (before["query"], after["query"])}
        if self.lab.target == "pseries":  # the host's DDW policy; windows are the guest's
            kept["policy"] = tuple(  # type: ignore[assignment]
                {
                    p["phb"]: {k: v for k, v in p["policy"].items() if k != "table-memory"}
                    for p in s["phbs"]
                }
                for s in (before, after)
            )
        for k, (b, a) in kept.items():
            if a != b:
                raise Finding("divergence", f"system_reset changed {k}: " + "; ".join(paths(b, a)))
        if after["counters"]["iotlb-entries"] != 0:
            raise Finding("divergence", f"IOTLB not empty after reset: {after['counters']}")
        self.lab.snap = after_s
