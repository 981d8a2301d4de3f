"""The differential run: the same operations on the kernel (the runner) and the model.

The generator picks each operation from the model's state and the model
answers it at once; a batch goes to the runner, whose answers are compared
call by call.  The first difference ends the run: :class:`Divergence` holds
the operation, both answers, the seed and the sequence from the start of the
context that reproduces it (``replay``).  A runner that stops answering or
a guest that oopses is a :class:`RunnerFailure` with what the console says.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from .generator import Generator
from .known import known_difference
from .mockhw import MockFacts, facts_from_probe
from .model import (
    HWPT_ALLOC_PASID,
    IOMMU_HWPT_DATA_SELFTEST,
    NEST_PARENT,
    SELFTEST_DATA_LEN,
    ModelSide,
)
from .protocol import Answer, Hello, Op, ProtocolError, Src, decode_answer, decode_hello


class Transport(Protocol):
    """A line channel to the runner."""

    def send(self, lines: list[str]) -> None: ...

    def readline(self, timeout: float) -> str:
        """One line without its end; raises TimeoutError or EOFError."""
        ...


class RunnerFailure(Exception):
    """The runner did not answer (crash, hang, guest oops) or broke the protocol."""


@dataclass
class Divergence:
    index: int  # in ``ops``
    op: Op
    kernel: Answer
    model: Answer
    seed: int | None
    ops: list[Op]  # from the context's S up to and including ``op``
    model_error: str | None = None  # the model raised something else than IommufdError

    def report(self) -> str:
        lines = [
            f"divergence at operation {self.index} (seed {self.seed}): {self.op}",
            f"  kernel: {self.kernel}",
            f"  model:  {self.model}",
        ]
        if self.model_error:
            lines.append(f"  model raised: {self.model_error}")
        lines.append(f"  sequence that reproduces it ({len(self.ops)} operations):")
        lines += [f"    {o}" for o in self.ops]
        return "\n".join(lines)


@dataclass
class RunStats:
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # errno -> count (kernel's)
    #: documented differences met (known.py): name -> count
    known: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, op: Op, ans: Answer) -> None:
        self.ops += 1
        self.by_op[op.name] = self.by_op.get(op.name, 0) + 1
        key = ans.errno or "ok"
        self.errors[key] = self.errors.get(key, 0) + 1


class Session:
    """One runner: its hello, the mock device's facts, and request numbering."""

    def __init__(
        self, transport: Transport, timeout: float = 60.0, check: Callable[[], None] | None = None
    ) -> None:
        self.t = transport
        self.timeout = timeout
        #: called after every batch: raises RunnerFailure if the guest oopsed
        self.check = check or (lambda: None)
        self.seq = 0
        try:
            self.hello: Hello = decode_hello(self._line())
            facts = facts_from_probe(self.call([Op("P")])[0])
            facts = replace(facts, iova_cap=self._probe_iova_cap(facts))
            data, pasid, data_len = self._probe_mock_driver(facts)
            self.facts: MockFacts = replace(
                facts, paging_data=data, pasid_flag=pasid, selftest_data_len=data_len
            )
        except ProtocolError as exc:
            raise RunnerFailure(str(exc)) from exc

    def _probe_iova_cap(self, facts: MockFacts) -> int:
        """``iopt_alloc_iova()``'s alignment cap as the kernel shows it, if below a page.

        The cap is HPAGE_SIZE, which ppc64 sets only when the MMU has a huge
        page size: on TCG's PowerNV it is 1 << 0 and automatic IOVAs are not
        even page aligned.  On a fresh context: a 2-byte area at PAGE_SIZE + 1
        (the allocator starts at PAGE_SIZE), then two pages from an aligned
        address go to the first hole from PAGE_SIZE + 3, aligned to
        min(2 pages, cap).  0: the cap is a page or more (the THP size or
        PAGE_SIZE, as the facts say).  The next S starts the run's own context.
        """
        page = facts.page_size
        ans = self.call([Op("S"), Op("ia", (0,))])
        ioas = ans[1].values[0] if ans[1].errno is None and ans[1].values else 0
        first, second = self.call(
            [Op("m", (ioas, 6, 0, Src(0, 1), 2)), Op("m", (ioas, 6, 0, Src(0, 0), 2 * page))]
        )
        if first.errno or second.errno or first.values[:1] != (page + 1,):
            raise ProtocolError(f"IOVA cap probe: answers {first}, {second}")
        gap = second.values[0] - page
        if gap == 3:
            return 1
        if gap == page:
            return 0
        if 3 < gap < page and not gap & (gap - 1):
            return gap
        raise ProtocolError(f"IOVA cap probe: two pages at {second}, after an area at page + 1")

    def _probe_mock_driver(self, facts: MockFacts) -> tuple[bool, bool, int]:
        """Whether the kernel's mock driver takes, for a paging HWPT, the selftest's
        data and IOMMU_HWPT_ALLOC_PASID, and the longest selftest data it takes.

        Linux 6.19's mock_domain_alloc_paging_flags() reads ``struct
        iommu_hwpt_selftest`` (its ``pagetable_type``: the runner's zeroed one is
        the default mock page table) and allows the PASID flag; 6.12's refuses
        both (EOPNOTSUPP), as the model's driver does.  6.19's struct is 8 bytes
        (6.12's 4); iommu_copy_struct_from_user() refuses longer data (EINVAL).
        On a fresh context: a mock device on an IOAS, a paging HWPT on that IOAS
        with the data, one with the flag, a nest parent and a nested HWPT with
        8 bytes of data.
        """
        if facts.mock_errno is not None:
            # no mock device: every HWPT_ALLOC fails before the driver
            return False, False, SELFTEST_DATA_LEN
        ans = self.call([Op("S"), Op("ia", (0,))])
        ioas = ans[1].values[0] if ans[1].errno is None and ans[1].values else 0
        (md,) = self.call([Op("md", (ioas,))])
        if md.errno is not None or len(md.values) != 3:
            raise ProtocolError(f"mock driver probe: mock domain {md}")
        dev = md.values[2]
        data, pasid = self.call(
            [
                Op("h", (dev, ioas, 0, IOMMU_HWPT_DATA_SELFTEST, SELFTEST_DATA_LEN, 0)),
                Op("h", (dev, ioas, HWPT_ALLOC_PASID, 0, 0, 0)),
            ]
        )
        for what, a in (("selftest data", data), ("the PASID flag", pasid)):
            if a.errno not in (None, "EOPNOTSUPP"):
                raise ProtocolError(f"mock driver probe: HWPT_ALLOC with {what}: {a}")
        (parent,) = self.call([Op("h", (dev, ioas, int(NEST_PARENT), 0, 0, 0))])
        if parent.errno is not None or not parent.values:
            raise ProtocolError(f"mock driver probe: nest parent {parent}")
        wide = 2 * SELFTEST_DATA_LEN
        (nested,) = self.call(
            [Op("h", (dev, parent.values[0], 0, IOMMU_HWPT_DATA_SELFTEST, wide, 0))]
        )
        if nested.errno not in (None, "EINVAL"):
            raise ProtocolError(f"mock driver probe: nested HWPT with {wide} bytes: {nested}")
        return (
            data.errno is None,
            pasid.errno is None,
            wide if nested.errno is None else SELFTEST_DATA_LEN,
        )

    def _line(self) -> str:
        try:
            return self.t.readline(self.timeout).rstrip("\r")
        except TimeoutError as exc:
            raise RunnerFailure(f"the runner did not answer within {self.timeout}s") from exc
        except EOFError as exc:
            raise RunnerFailure("the runner's channel closed (runner exited or crashed)") from exc

    def call(self, ops: list[Op]) -> list[Answer]:
        """Send ``ops`` and read one answer for each."""
        first = self.seq + 1
        self.seq += len(ops)
        self.t.send([op.encode(first + i) for i, op in enumerate(ops)])
        out = []
        for i in range(len(ops)):
            line = self._line()
            try:
                out.append(decode_answer(line, first + i))
            except ProtocolError as exc:
                raise RunnerFailure(f"{ops[i]}: {exc}") from exc
        self.check()
        return out

    def quit(self) -> None:
        self.seq += 1
        self.t.send([f"{self.seq:x} q"])


def run_model(model: ModelSide, op: Op) -> tuple[Answer, str | None]:
    """The model's answer; an exception other than IommufdError is reported, not raised."""
    try:
        return model.run(op), None
    except Exception as exc:  # a model bug: becomes a divergence with its traceback
        tb = traceback.format_exc(limit=6)
        return Answer(f"model raised {type(exc).__name__}"), tb


def compare(
    session: Session,
    ops: Iterable[Op],
    batch: int = 200,
    stats: RunStats | None = None,
    seed: int | None = None,
) -> Divergence | None:
    """Run a fixed sequence (a replay) on both sides; the first divergence or None."""
    model = ModelSide(session.facts, session.hello)
    return _drive(session, model, iter(ops), None, batch, stats, seed)


def differential(
    session: Session, seed: int, count: int, batch: int = 200, stats: RunStats | None = None
) -> Divergence | None:
    """``count`` generated operations (after a fresh context) on both sides."""
    model = ModelSide(session.facts, session.hello)
    return _drive(session, model, None, count, batch, stats, seed)


def _drive(
    session: Session,
    model: ModelSide,
    fixed: Iterable[Op] | None,
    count: int | None,
    batch: int,
    stats: RunStats | None,
    seed: int | None,
) -> Divergence | None:
    stats = stats if stats is not None else RunStats()
    t0 = time.monotonic()
    history: list[Op] = []  # since the last S
    gen = Generator(seed or 0, model)
    it = iter(fixed) if fixed is not None else None
    pending: list[Op] = [] if it is not None else [Op("S")]
    done = 0
    while True:
        ops: list[Op] = []
        answers: list[tuple[Answer, str | None]] = []
        for op in pending:
            ops.append(op)
            answers.append(run_model(model, op))
        pending = []
        while len(ops) < batch:
            if it is not None:
                op_next = next(it, None)
                if op_next is None:
                    break
                op = op_next
            else:
                if count is not None and done + len(ops) >= count + 1:
                    break
                op = gen.next_op()
            ops.append(op)
            answers.append(run_model(model, op))
            if answers[-1][1] is not None:
                break  # the model failed: nothing after it means anything
        if not ops:
            break
        kernel = session.call(ops)
        for i, (op, k, (m, err)) in enumerate(zip(ops, kernel, answers, strict=True)):
            if op.name == "S":
                history = []
            history.append(op)
            stats.count(op, k)
            if k != m and err is None:
                name = known_difference(op, k, m, session.hello, session.facts.page_size)
                if name is not None:
                    stats.known[name] = stats.known.get(name, 0) + 1
                    continue
            if k != m or err is not None:
                stats.seconds += time.monotonic() - t0
                return Divergence(done + i, op, k, m, seed, list(history), err)
        done += len(ops)
    stats.seconds += time.monotonic() - t0
    return None
