"""The conformance run's wire protocol, session and comparer (pyctl.conformance).

The loopback runner answers with the model, so a run without a guest must
find no divergence, and a perturbed answer must be found at its operation
with the sequence that reproduces it.  The C runner itself (built by
scripts/build-conformance.sh) is driven on the host where it can be: its
hello, its refusals and its answer format.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyctl.conformance import (
    Answer,
    Op,
    ProtocolError,
    RunnerFailure,
    RunStats,
    Session,
    Src,
    compare,
    differential,
    facts_from_probe,
)
from pyctl.conformance.loopback import HELLO, LoopbackRunner, parse_request
from pyctl.conformance.protocol import decode_answer, decode_hello, errno_name

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "op",
    [
        Op("S"),
        Op("ia", (0,)),
        Op("m", (1, 7, 0x1000000, Src(3, 0x800), 0x2000)),
        Op("m", (1, 6, 0, 0xB000, 1 << 63)),  # a raw address that begins with a hex 'b'
        Op("u", (1, 0, (1 << 64) - 1)),
        Op("c", (2, 6, 0, 1, 0x1000000, 0x800)),
        Op("a", (1, 2, 0x1000000, 0x1FFFFFF, 0x3000000, 0x3FFFFFF)),
        Op("a", (1, 0)),
        Op("h", (3, 4, 0, 0xDEAD, 4, 0xFFFFFFFF)),
        Op("md", (0xFFFFFFFF,)),
    ],
)
def test_request_round_trip(op: Op) -> None:
    seq, back = parse_request(op.encode(0x1234))
    assert (seq, back) == (0x1234, op)


def test_op_arity_is_checked() -> None:
    with pytest.raises(ValueError, match="takes 5 arguments"):
        Op("m", (1, 2))
    with pytest.raises(ValueError, match="unknown operation"):
        Op("zz")


def test_answers() -> None:
    assert decode_answer("1f ok 2 4 3", 0x1F) == Answer(None, (2, 4, 3))
    assert decode_answer("1f e 5a 3", 0x1F) == Answer("EMSGSIZE", (3,))
    assert decode_answer("2 e 5f", 2) == Answer("EOPNOTSUPP")  # not Python's ENOTSUP
    assert decode_answer("2 e 2 probe", 2) == Answer("ENOENT")
    with pytest.raises(ProtocolError, match="not for request 3"):
        decode_answer("2 ok", 3)
    with pytest.raises(ProtocolError, match="refused request 2: bad m takes 5"):
        decode_answer("2 bad m takes 5 arguments", 2)
    with pytest.raises(ProtocolError, match="bad answer"):
        decode_answer("2 ok zz", 2)
    assert errno_name(98) == "EADDRINUSE"


def test_hello() -> None:
    h = decode_hello("hello 1 1000 4 800000 200000000000 40000000")
    assert h == HELLO
    assert h.va(Src(2, 0x10)) == 0x2000_0000_0000 + 2 * (1 << 30) + 0x10
    with pytest.raises(ProtocolError, match="protocol 2"):
        decode_hello("hello 2 1000 4 800000 200000000000 40000000")
    with pytest.raises(ProtocolError, match="hello line"):
        decode_hello("1 ok")


def test_facts_from_the_probe() -> None:
    # page size, THP size, mock errno, hw info type, test reg, caps, alignment, 2 ranges
    ans = Answer(None, (0x10000, 1 << 21, 0, 0xFEEDBEEF, 0xDEADBEEF, 1, 0x8000, 2, 0x1000000,
                        0x1FFFFFF, 0x3000000, 0x7FFFFFFF))  # fmt: skip
    f = facts_from_probe(ans)
    assert (f.page_size, f.hpage_size, f.pgsize) == (0x10000, 1 << 21, 0x8000)
    assert f.aperture == (0x1000000, 0x7FFFFFFF)
    assert f.reserved == ((0x2000000, 0x2FFFFFF),)
    dev = f.device("iommufd_mock0")
    assert (dev.ias, dev.aperture_start, dev.pgsize_bitmap) == (31, 0x1000000, 0x8000)
    assert f.mock_errno is None
    none = facts_from_probe(Answer(None, (0x10000, 1 << 21, 22, 0, 0, 0, 0, 0)))
    assert (none.mock_errno, none.page_size, none.hpage_size) == ("EINVAL", 0x10000, 1 << 21)
    with pytest.raises(ProtocolError, match="IOMMUFD_TEST"):
        facts_from_probe(Answer("ENOENT"))
    with pytest.raises(ProtocolError, match="bad probe"):
        facts_from_probe(Answer(None, (1, 2, 3)))


def test_loopback_run_has_no_divergence_and_is_seeded() -> None:
    stats = RunStats()
    a, b = LoopbackRunner(), LoopbackRunner()
    assert differential(Session(a), seed=7, count=2000, stats=stats) is None
    assert differential(Session(b), seed=7, count=2000) is None
    assert a.sent == b.sent  # the same seed, the same sequence
    assert stats.ops == 2001  # S and 2000 generated
    # every operation, and failures of many kinds (the invalid calls)
    assert set(stats.by_op) == {"S", "ia", "d", "m", "u", "c", "r", "a", "o", "h", "md", "mr", "gi"}
    assert {"ENOENT", "EINVAL", "EOPNOTSUPP", "EOVERFLOW", "EBUSY", "EMSGSIZE"} <= set(stats.errors)
    assert stats.errors["ok"] > stats.ops // 3


def test_a_perturbed_answer_is_the_first_divergence_with_its_sequence() -> None:
    def perturb(seq: int, op: Op, ans: Answer) -> Answer:
        return Answer("EINVAL") if seq == 304 else ans

    d = differential(Session(LoopbackRunner(perturb=perturb)), seed=3, count=1000)
    assert d is not None
    # requests 1-12 are the probes (P; S ia m m: the IOVA cap; S ia md h h h h: the
    # mock driver), 13 the context's S
    assert d.index == 291
    assert d.kernel == Answer("EINVAL") and d.model != d.kernel
    assert d.ops[0] == Op("S") and d.ops[-1] == d.op and len(d.ops) == d.index + 1
    text = d.report()
    assert "divergence at operation 291 (seed 3)" in text and str(d.op) in text
    # the sequence reproduces it on a fresh runner
    again = compare(Session(LoopbackRunner(perturb=perturb)), d.ops, seed=3)
    assert again is not None and again.op == d.op and again.index == d.index


def test_a_silent_or_closed_runner_fails_in_bounded_time() -> None:
    class Silent(LoopbackRunner):
        def send(self, lines: list[str]) -> None:
            self.sent += lines  # says nothing

    with pytest.raises(RunnerFailure, match="did not answer within"):
        Session(Silent(), timeout=0.1)

    class Closed(LoopbackRunner):
        def readline(self, timeout: float) -> str:
            raise EOFError

    with pytest.raises(RunnerFailure, match="closed"):
        Session(Closed())


def test_the_c_runner_speaks_the_protocol(tmp_path: Path) -> None:
    """The x86_64 runner on this host: hello, refusals, a context or ENOENT."""
    build = subprocess.run(
        ["bash", str(REPO / "scripts/build-conformance.sh"), "x86_64"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if build.returncode:
        pytest.skip(f"runner not buildable here: {build.stderr.strip()[-300:]}")
    runner = Path(build.stdout.strip().splitlines()[-1]) / "iommufd-conformance-x86_64"
    reqs = "1 ia 0\n2 S\n3 zz\n4 m 1 2\n5 m 1 6 0 b9+0 1000\n6 q\n"
    out = subprocess.run([str(runner), "-"], input=reqs, capture_output=True, text=True,
                         timeout=30, check=True)  # fmt: skip
    lines = out.stdout.splitlines()
    assert decode_hello(lines[0]) == HELLO
    with pytest.raises(ProtocolError, match="no context"):
        decode_answer(lines[1], 1)
    s = decode_answer(lines[2], 2)  # ENOENT without /dev/iommu, else a context
    assert s.errno in (None, "ENOENT", "EACCES")
    if s.errno is None:
        with pytest.raises(ProtocolError, match="unknown operation zz"):
            decode_answer(lines[3], 3)
        with pytest.raises(ProtocolError, match="m takes 5 arguments"):
            decode_answer(lines[4], 4)
        with pytest.raises(ProtocolError, match="bad source b9"):
            decode_answer(lines[5], 5)
    assert lines[-1] == "6 ok"


def test_a_kernel_without_the_mock_device_fails_the_session_clearly() -> None:
    class NoSelftest(LoopbackRunner):
        def _probe(self) -> Answer:
            return Answer("ENOENT")  # no /dev/iommu, or no IOMMUFD_TEST

    with pytest.raises(RunnerFailure, match=r"probe failed: ENOENT .*IOMMUFD_TEST"):
        Session(NoSelftest())
