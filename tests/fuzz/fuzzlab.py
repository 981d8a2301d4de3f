"""The fuzz campaign's machines, steps and oracle.

A campaign drives one QEMU (q35 with ``iommulab-viommu`` and two edu
devices, or pseries with ``iommulab-spapr-s2`` and edu on two PHBs, both
under ``-accel qtest``: no guest) through :class:`Step` s: a QMP command, a
hypercall, an RTAS call, a guest memory write or a ``system_reset``.  Every
step is recorded, so a finding is a seed plus a replayable sequence
(:func:`replay`).  The oracle, for every step:

* QEMU answers within ``CALL_TIMEOUT`` and is still alive (else: a hang or a
  crash, with QEMU's last output);
* a refused QMP command is a ``GenericError`` with a non-empty message, and
  changes nothing: :meth:`Lab.snapshot` (the lab's query, counters without
  hits/misses/walks, fault queues, PHBs and windows) is the same after it;
* the generators (qmpfuzz, spaprfuzz) add their own read-back checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctl.qemu.pseries_qtest import PseriesQtest
from pyctl.qemu.qmp import ExecuteError, QmpError
from pyctl.qemu.qtest import QTestError
from pyctl.qemu.qtest_machine import QtestMachine

CALL_TIMEOUT = 15.0  # seconds for any one command (a hang is a finding)
EDU_BAR = 0xFE000000  # q35: where edu0's BAR0 goes
EDU_BUF = 0x40000  # edu's DMA buffer in its own address space
#: counters that move with DMA or with the IOTLB's own behaviour, not with commands
VOLATILE_COUNTERS = ("hits", "misses", "walks")


class Finding(Exception):
    """A crash, hang or divergence: ``kind`` is one of those words."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class Step:
    """One replayable action: ``op`` is qmp, hcall, rtas, write, dma (edu0) or reset."""

    op: str
    name: str = ""
    args: Any = None
    nret: int = 0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op}
        if self.name:
            d["name"] = self.name
        if self.args is not None:
            d["args"] = self.args
        if self.nret:
            d["nret"] = self.nret
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Step:
        return cls(d["op"], d.get("name", ""), d.get("args"), d.get("nret", 0))

    def brief(self, limit: int = 300) -> str:
        text = json.dumps(self.to_json(), separators=(",", ":"))
        return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


@dataclass
class Outcome:
    """What a step returned: ``ok`` and ``value`` (QMP return, hcall/RTAS words) or
    ``error`` (QMP class and message)."""

    ok: bool
    value: Any = None
    error_class: str = ""
    error: str = ""


@dataclass
class Stats:
    calls: int = 0
    refused: int = 0
    resets: int = 0
    #: resets that found IOTLB entries to drop (the reset check was not vacuous)
    resets_with_iotlb: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    #: per op and name: (accepted, refused)
    by_name: dict[str, tuple[int, int]] = field(default_factory=dict)


class Lab:
    """One fuzzed QEMU: a target (``q35`` or ``pseries``) and the steps run so far."""

    def __init__(self, target: str, binary: Path) -> None:
        self.target = target
        self.steps: list[Step] = []
        #: the last snapshot, if nothing changed since (None: take a new one)
        self.snap: str | None = None
        self.stats = Stats()
        self.vm: QtestMachine
        if target == "q35":
            self.vm = QtestMachine(
                binary,
                [
                    "-machine",
                    "q35",
                    "-m",
                    "256",
                    "-device",
                    "iommulab-viommu,id=viommu0",
                    "-device",
                    "edu,id=edu0,addr=03.0,dma_mask=0xffffffffffffffff",
                    "-device",
                    "edu,id=edu1,addr=04.0,dma_mask=0xffffffffffffffff",
                ],
                prefix="iommulab-fuzz-",
                timeout=CALL_TIMEOUT,
            )
            self.iommu = "viommu0"
            self.requesters = ["edu0", "edu1"]
        elif target == "pseries":
            self.vm = PseriesQtest(
                binary,
                [
                    "-device",
                    "spapr-pci-host-bridge,index=1,id=phb1",
                    "-device",
                    "edu,id=edu1,bus=phb1.0,dma_mask=0xffffffffffffffff",
                    "-device",
                    "iommulab-spapr-s2,id=s2,phb=0",
                ],
                timeout=CALL_TIMEOUT,
            )
            self.iommu = "s2"
            self.requesters = ["s2", "edu0", "edu1"]
        else:
            raise ValueError(f"unknown target {target!r} (q35 or pseries)")
        self.phbs: list[dict[str, Any]] = (
            self.qmp("x-iommulab-spapr-query-phbs") if target == "pseries" else []
        )

    @property
    def pseries(self) -> PseriesQtest:
        assert isinstance(self.vm, PseriesQtest)
        return self.vm

    def close(self) -> None:
        try:
            self.vm.close()
        except Exception:  # a client that lost its connection cannot say quit
            self.vm.kill()

    # --- the one way a step runs: bounded, checked for death ---
    def _guard(self, step: Step, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (QmpError, QTestError, OSError) as exc:
            if not self.vm.running() or self.vm.wait_exit(1.0) is not None:
                raise Finding(
                    "crash", f"QEMU died at {step.brief()}: {exc}; {self.vm.log_tail(8)}"
                ) from exc
            if isinstance(exc, TimeoutError) or "no answer" in str(exc):
                msg = f"no answer within {CALL_TIMEOUT:g}s to {step.brief()}"
                raise Finding("hang", msg) from exc
            if isinstance(exc, QmpError):  # QEMU runs, the client gave up on the answer
                raise Finding("client", f"QMP client lost at {step.brief()}: {exc}") from exc
            raise

    def qmp(self, name: str, **args: Any) -> Any:
        """An unrecorded QMP command the oracle itself needs (queries, set-up)."""
        return self._guard(
            Step("qmp", name, args), lambda: self.vm.qmp.execute(name, args, CALL_TIMEOUT)
        )

    def run(self, step: Step) -> Outcome:
        """Run and record one step."""
        self.steps.append(step)
        self.stats.calls += 1
        self.stats.by_op[step.op] = self.stats.by_op.get(step.op, 0) + 1
        out: Outcome = self._guard(step, lambda: self._run(step))
        key = f"{step.op} {step.name}".strip()
        ok, no = self.stats.by_name.get(key, (0, 0))
        self.stats.by_name[key] = (ok + out.ok, no + (not out.ok))
        if not out.ok:
            self.stats.refused += 1
        return out

    def _run(self, step: Step) -> Outcome:
        if step.op == "qmp":
            try:
                return Outcome(True, self.vm.qmp.execute(step.name, step.args, CALL_TIMEOUT))
            except ExecuteError as exc:
                return Outcome(False, error_class=exc.error_class, error=exc.error.error.desc)
        if step.op == "dma":
            src, dst, to_memory = step.args
            self.edu_dma(src, dst, to_memory)
            return Outcome(True)
        if step.op == "hcall":
            ret, words = self.pseries.hcall(int(step.name, 0), *step.args)
            return Outcome(ret == 0, [ret, *words])
        if step.op == "rtas":
            rets = self.pseries.rtas(step.name, step.args, step.nret)
            return Outcome(rets[0] == 0, rets)
        if step.op == "write":
            addr, hexdata = step.args
            self.vm.qt.memwrite(addr, bytes.fromhex(hexdata))
            return Outcome(True)
        if step.op == "reset":
            self.vm.qmp.execute("system_reset", None, CALL_TIMEOUT)
            self.vm.qmp.wait_event("RESET", CALL_TIMEOUT)
            self.stats.resets += 1
            return Outcome(True)
        raise ValueError(f"unknown step {step.op}")

    # --- edu0's DMA (64 bytes; edu's buffer is EDU_BUF) ---
    def edu_bar(self) -> int:
        """edu0's BAR0, (re)programmed: a system_reset clears it."""
        if self.target == "pseries":
            return self.pseries.edu_setup()
        for reg, val in ((0x10, EDU_BAR), (0x04, 0x6)):  # BAR0, memory + bus master
            self.vm.qt.outl(0xCF8, 0x80000000 | (3 << 11) | reg)
            self.vm.qt.outl(0xCFC, val)
        return EDU_BAR

    def edu_dma(self, src: int, dst: int, to_memory: bool) -> None:
        bar, qt = self.edu_bar(), self.vm.qt
        for off, val in ((0x80, src), (0x88, dst), (0x90, 64), (0x98, 1 | (2 if to_memory else 0))):
            qt.writeq(bar + off, val)
        qt.clock_step(200_000_000)  # edu runs the DMA from a 100 ms timer
        if qt.readq(bar + 0x98) & 1:
            raise Finding("divergence", f"edu DMA {src:#x} -> {dst:#x} did not run")

    def dma(self, src: int, dst: int, to_memory: bool) -> Outcome:
        return self.run(Step("dma", args=[src, dst, to_memory]))

    # --- oracle helpers ---
    def lab_state(self) -> dict[str, Any]:
        """What the control plane programmed into the vIOMMU (or s2)."""
        res: dict[str, Any] = self.qmp("x-iommulab-query", iommu=self.iommu)
        return res

    def ownable(self) -> list[str]:
        """The devices that can be owned (docs/qmp.md "Ownership")."""
        return [self.iommu, *(p["path"] for p in self.phbs)]

    def owners(self) -> dict[str, Any]:
        return {d: self.qmp("x-iommulab-query-owner", device=d) for d in self.ownable()}

    def release_owners(self) -> None:
        """Give up whatever the stream claimed (tokens are not secret: query-owner names
        them), so that the harness's own programming is not refused."""
        for d, o in self.owners().items():
            if "owner" in o:
                out = self.run(
                    Step("qmp", "x-iommulab-owner-release", {"device": d, "owner": o["owner"]})
                )
                if not out.ok:
                    raise Finding("divergence", f"release of {d} by its token refused: {out.error}")

    def snapshot(self) -> str:
        """Everything a refused command must leave alone, canonical JSON."""
        counters = self.qmp("x-iommulab-query-counters", iommu=self.iommu)
        for k in VOLATILE_COUNTERS:
            counters.pop(k, None)
        faults = self.qmp("x-iommulab-query-faults")
        snap: dict[str, Any] = {
            "query": self.lab_state(),
            "counters": counters,
            "faults": [len(faults["faults"]), faults["dropped"]],
            "owners": self.owners(),
        }
        if self.target == "pseries":
            snap["phbs"] = self.qmp("x-iommulab-spapr-query-phbs")
        return json.dumps(snap, sort_keys=True)

    def check_refusal(self, step: Step, out: Outcome) -> None:
        if out.error_class != "GenericError" or not out.error.strip():
            raise Finding(
                "divergence",
                f"{step.brief()} refused with class {out.error_class!r}, message {out.error!r}",
            )

    def check_alive(self) -> None:
        self.qmp("query-status")

    # --- guest memory and hypercall helpers that are steps ---
    def write(self, addr: int, data: bytes) -> Outcome:
        return self.run(Step("write", args=[addr, data.hex()]))

    def hcall(self, opcode: int, *args: int) -> Outcome:
        return self.run(Step("hcall", hex(opcode), [a & (2**64 - 1) for a in args]))

    def rtas(self, name: str, args: list[int], nret: int) -> Outcome:
        return self.run(Step("rtas", name, [a & 0xFFFFFFFF for a in args], nret))


def free_domain(used: list[int], low: int = 1000) -> int:
    """The lowest domain id from ``low`` up that ``used`` lacks (ids are uint32)."""
    taken = set(used)
    return next(d for d in range(low, low + len(taken) + 1) if d not in taken)


def paths(a: Any, b: Any, at: str = "") -> list[str]:
    """Where two JSON values differ: ``path: old -> new`` (a few, short)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out += paths(a.get(k), b.get(k), f"{at}.{k}")
        return out[:4]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            if x != y
            for p in paths(x, y, f"{at}[{i}]")
        ][:4]
    return [f"{at}: {json.dumps(a)[:200]} -> {json.dumps(b)[:200]}"]


def diff(before: str, after: str) -> str:
    """Where two snapshots differ, short."""
    return "; ".join(paths(json.loads(before), json.loads(after)))


def replay(target: str, binary: Path, steps: list[Step]) -> Iterator[tuple[Step, Outcome]]:
    """Run ``steps`` on a fresh machine (a Finding propagates); yields each outcome."""
    lab = Lab(target, binary)
    try:
        for step in steps:
            yield step, lab.run(step)
        lab.check_alive()
    finally:
        lab.close()
