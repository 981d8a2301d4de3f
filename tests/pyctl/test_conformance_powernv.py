"""What the conformance run needs for PowerNV (pyctl.conformance).

PowerNV's host channel is its console: the transport must hand the runner's
lines only, and keep reading so the guest's console never stalls.  Its kernel
(TCG, no huge page size: HPAGE_SIZE = 1) does not even page-align automatic
IOVAs: the session probes that cap and the model takes it.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pyctl.conformance import Answer, Op, RunnerFailure, Session, differential
from pyctl.conformance.guest import ConsoleTransport
from pyctl.conformance.loopback import PPC64LE_FACTS, X86_FACTS, LoopbackRunner
from pyctl.conformance.model import HWPT_ALLOC_PASID, kernel_options


def test_the_session_finds_no_cap_below_a_page_on_the_usual_kernels() -> None:
    for facts in (X86_FACTS, PPC64LE_FACTS):
        s = Session(LoopbackRunner(facts))
        assert s.facts.iova_cap == 0
        assert kernel_options(s.facts).max_iova_alignment == facts.hpage_size


def test_a_kernel_without_huge_pages_gives_cap_1_and_the_model_follows() -> None:
    def powernv(seq: int, op: Op, ans: Answer) -> Answer:
        # the second probe map: two pages right after the 2-byte area at page + 1
        return Answer(None, (4096 + 3,)) if seq == 5 else ans

    s = Session(LoopbackRunner(perturb=powernv))
    assert s.facts.iova_cap == 1
    assert kernel_options(s.facts).max_iova_alignment == 1
    # a model runner with that cap answers the probe as the PowerNV kernel does
    facts = replace(PPC64LE_FACTS, iova_cap=1)
    s = Session(LoopbackRunner(facts))
    assert s.facts.iova_cap == 1
    assert differential(s, seed=1, count=2000) is None


def test_a_probe_answer_that_fits_no_cap_fails_the_session() -> None:
    def odd(seq: int, op: Op, ans: Answer) -> Answer:
        return Answer(None, (4096 + 5,)) if seq == 5 else ans

    with pytest.raises(RunnerFailure, match="IOVA cap probe"):
        Session(LoopbackRunner(perturb=odd))


def test_the_console_transport_returns_the_runners_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "h.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    console = (
        b"[    0.1] Linux version 6.12\r\nIOMMULAB-RESULT {}\r\n"
        + b"x" * 300_000  # more than a Unix socket holds unread
        + b"\r\nhello 1 10000 4 800000 200000000000 40000000\n"
        b"iommufd-conformance: probe: mock domain: Invalid argument\r\n"
        b"1 ok 10000 0\n[    2.0] a kernel line\r\n- bad line longer\n2 e 16\n3 bad no context\n"
    )

    def guest() -> None:
        conn, _ = srv.accept()
        for i in range(0, len(console), 4096):
            conn.sendall(console[i : i + 4096])
        conn.close()

    t = threading.Thread(target=guest)
    t.start()
    tr = ConsoleTransport(path)
    try:
        got = [tr.readline(10.0) for _ in range(5)]
        assert got == [
            "hello 1 10000 4 800000 200000000000 40000000",
            "1 ok 10000 0",
            "- bad line longer",
            "2 e 16",
            "3 bad no context",
        ]
        with pytest.raises(EOFError):
            tr.readline(10.0)
    finally:
        t.join(10)
        tr.close()
        srv.close()


def test_the_session_probes_whether_the_mock_driver_takes_paging_data() -> None:
    """6.19's mock driver reads struct iommu_hwpt_selftest for a paging HWPT (its
    pagetable_type) and allows IOMMU_HWPT_ALLOC_PASID; 6.12's refuses both.  The
    session asks, the model follows."""
    assert not Session(LoopbackRunner(X86_FACTS)).facts.paging_data
    taking = replace(X86_FACTS, paging_data=True, pasid_flag=True)
    s = Session(LoopbackRunner(taking))
    assert s.facts.paging_data and s.facts.pasid_flag
    assert differential(s, seed=1, count=2000) is None

    # a model that did not take the kernel's answer diverges at the first such call
    s = Session(LoopbackRunner(taking))
    s.facts = replace(s.facts, paging_data=False)
    div = differential(s, seed=1, count=2000)
    assert div is not None
    assert div.ops[-1].name == "h" and div.ops[-1].args[3:5] == (0xDEAD, 4)
    s = Session(LoopbackRunner(taking))
    s.facts = replace(s.facts, pasid_flag=False)
    div = differential(s, seed=1, count=2000)
    assert div is not None
    assert div.ops[-1].name == "h" and div.ops[-1].args[2] & HWPT_ALLOC_PASID

    def odd(seq: int, op: Op, ans: Answer) -> Answer:
        return Answer("EINVAL") if op.name == "h" else ans

    with pytest.raises(RunnerFailure, match="mock driver probe"):
        Session(LoopbackRunner(perturb=odd))
