"""A runner without a kernel: the protocol's other end, answered by a model.

It parses request lines and prints answer lines as the C runner does
(guest/conformance/iommufd-conformance.c), so the protocol, the session and
the comparer can be tested, and a soak can be dry-run, without a guest.
``perturb`` changes one answer to check that a divergence is caught.
"""

from __future__ import annotations

import errno as _errno
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from .mockhw import MockFacts
from .model import ModelSide
from .protocol import OPS, Answer, Hello, Op, Src

#: what the C runner reports for the selftest's mock device on x86_64 (6.12 and 6.19)
X86_FACTS = MockFacts(
    page_size=4096,
    hw_info_type=0xFEEDBEEF,
    test_reg=0xDEADBEEF,
    capabilities=1,
    hpage_size=2 << 20,
    pgsize=2048,
    aperture=(1 << 24, (1 << 31) - 1),
    reserved=(),
)
#: ... and on a ppc64le kernel with 64 KiB pages (MOCK_IO_PAGE_SIZE = PAGE_SIZE / 2)
PPC64LE_FACTS = replace(X86_FACTS, page_size=1 << 16, pgsize=1 << 15)
HELLO = Hello(1, 4096, 4, 8 << 20, 0x2000_0000_0000, 1 << 30)


def parse_request(line: str) -> tuple[int, Op]:
    """A request line as the C runner reads it."""
    parts = line.split()
    seq = int(parts[0], 16)
    name = parts[1]
    args: list[int | Src] = []
    for p in parts[2:]:
        if p.startswith("b") and "+" in p:
            buf, off = p[1:].split("+")
            args.append(Src(int(buf, 16), int(off, 16)))
        else:
            args.append(int(p, 16))
    if name not in OPS:
        raise ValueError(f"unknown operation {name}")
    return seq, Op(name, tuple(args))


def format_answer(seq: int, ans: Answer) -> str:
    vals = "".join(f" {v:x}" for v in ans.values)
    if ans.errno is None:
        return f"{seq:x} ok{vals}"
    return f"{seq:x} e {getattr(_errno, ans.errno):x}{vals}"


class LoopbackRunner:
    """A :class:`~pyctl.conformance.differ.Transport` answered by the model itself."""

    def __init__(
        self,
        facts: MockFacts = X86_FACTS,
        hello: Hello = HELLO,
        perturb: Callable[[int, Op, Answer], Answer] | None = None,
    ) -> None:
        self.facts = facts
        self.model = ModelSide(facts, hello)
        self.perturb = perturb
        self.out: deque[str] = deque(
            [f"hello 1 {hello.page_size:x} {hello.nbuf:x} {hello.buf_size:x} "
             f"{hello.base:x} {hello.stride:x}"]
        )  # fmt: skip
        self.sent: list[str] = []

    def _probe(self) -> Answer:
        f = self.facts
        ranges = [f.aperture[0]]
        for s, e in f.reserved:
            ranges += [s - 1, e + 1]
        ranges.append(f.aperture[1])
        if f.mock_errno is not None:
            code = getattr(_errno, f.mock_errno)
            return Answer(None, (f.page_size, f.hpage_size, code, 0, 0, 0, 0, 0))
        head = (f.page_size, f.hpage_size, 0, f.hw_info_type, f.test_reg, f.capabilities, f.pgsize)
        return Answer(None, (*head, len(ranges) // 2, *ranges))

    def send(self, lines: list[str]) -> None:
        for line in lines:
            self.sent.append(line)
            parts = line.split()
            if parts[1:] == ["q"]:
                self.out.append(f"{parts[0]} ok")
                continue
            seq, op = parse_request(line)
            ans = self._probe() if op.name == "P" else self.model.run(op)
            if self.perturb is not None:
                ans = self.perturb(seq, op, ans)
            self.out.append(format_answer(seq, ans))

    def readline(self, timeout: float) -> str:
        if not self.out:
            raise TimeoutError("the loopback runner has nothing to say")
        return self.out.popleft()
