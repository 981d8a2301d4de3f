"""One owner per vIOMMU (docs/qmp.md "Ownership"): two real QMP clients on two monitors
of one QEMU; the owner's token opens the state-changing commands, everything else is
refused naming the owner and changes nothing; queries stay open; a handover; a dead
owner (socket closed) is taken over with force, a live one is not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from testvm import ViommuVm, needs_viommu

from pyctl.qemu.qmp import ExecuteError, QmpSession

pytestmark = needs_viommu

IOMMU = "viommu0"
PAGE = 4096


class Two:
    """``a``: a client on the VM's second monitor; ``b``: the VM's own session."""

    def __init__(self, vm: ViommuVm) -> None:
        self.vm = vm
        self.a = QmpSession.connect(str(vm.qmp_path))
        self.b = vm.qmp

    def reconnect_a(self) -> None:
        self.a.close()
        self.a = QmpSession.connect(str(self.vm.qmp_path))


@pytest.fixture
def two() -> Iterator[Two]:
    with ViommuVm(devices=1) as vm:
        t = Two(vm)
        try:
            yield t
        finally:
            t.a.close()


def run(s: QmpSession, cmd: str, **args: Any) -> Any:
    return s.execute(cmd, {k.replace("_", "-"): v for k, v in args.items()})


def owner(s: QmpSession) -> Any:
    return run(s, "x-iommulab-query-owner", device=IOMMU)


def setup_domain(s: QmpSession, token: str | None = None) -> None:
    tok = {"owner": token} if token else {}
    run(s, "x-iommulab-domain-alloc", iommu=IOMMU, domain=1, type="paging", **tok)
    m = {"iova": 0x100000, "size": PAGE, "addr": 0x200000, "read": True, "write": True}
    run(s, "x-iommulab-map", iommu=IOMMU, domain=1, mappings=[m], **tok)
    run(s, "x-iommulab-attach", iommu=IOMMU, device="edu0", mode="domain", domain=1, **tok)


#: every state-changing command of the vIOMMU, with valid arguments
CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("x-iommulab-domain-alloc", {"domain": 2, "type": "paging"}),
    ("x-iommulab-domain-free", {"domain": 1}),
    (
        "x-iommulab-map",
        {
            "domain": 1,
            "mappings": [{"iova": 0, "size": PAGE, "addr": 0, "read": True, "write": False}],
        },
    ),
    ("x-iommulab-unmap", {"domain": 1, "ranges": [{"iova": 0x100000, "size": PAGE}]}),
    ("x-iommulab-attach", {"device": "edu0", "mode": "blocked"}),
    ("x-iommulab-invalidate", {"domain": 1}),
]


@pytest.mark.parametrize(("cmd", "args"), CHANGES, ids=[c for c, _ in CHANGES])
def test_every_change_needs_the_token(two: Two, cmd: str, args: dict[str, Any]) -> None:
    setup_domain(two.a)
    assert run(two.a, "x-iommulab-owner-claim", device=IOMMU, owner="plane-a") == {
        "device": "/machine/peripheral/viommu0",
        "owner": "plane-a",
        "connected": True,
    }
    before = run(two.b, "x-iommulab-query", iommu=IOMMU)
    for who, token in ((two.b, None), (two.b, "plane-b"), (two.a, None), (two.a, "x")):
        extra = {"owner": token} if token else {}
        with pytest.raises(ExecuteError, match=r"owned by .plane-a. .*connection is open"):
            run(who, cmd, iommu=IOMMU, **args, **extra)
        assert run(two.b, "x-iommulab-query", iommu=IOMMU) == before
    # the owner's token opens it, from either connection
    if cmd == "x-iommulab-domain-free":
        run(two.a, "x-iommulab-attach", iommu=IOMMU, device="edu0", mode="blocked", owner="plane-a")
    run(two.a, cmd, iommu=IOMMU, **args, owner="plane-a")
    assert cmd == "x-iommulab-invalidate" or run(two.b, "x-iommulab-query", iommu=IOMMU) != before


def test_queries_stay_open(two: Two) -> None:
    setup_domain(two.a)
    run(two.a, "x-iommulab-owner-claim", device=IOMMU, owner="plane-a")
    assert run(two.b, "x-iommulab-query", iommu=IOMMU)["domains"][0]["domain"] == 1
    assert run(two.b, "x-iommulab-query-counters", iommu=IOMMU)["faults"] == 0
    assert run(two.b, "x-iommulab-query-hw-info", device=IOMMU)["type"] == "paging"
    t = run(two.b, "x-iommulab-translate", iommu=IOMMU, device="edu0", iova=0x100000, access="read")
    assert t["allowed"] and t["addr"] == 0x200000
    assert run(two.b, "x-iommulab-query-faults", iommu=IOMMU)["faults"] == []
    assert owner(two.b) == {
        "device": "/machine/peripheral/viommu0",
        "owner": "plane-a",
        "connected": True,
    }


def test_force_takes_over_only_from_a_closed_connection(two: Two) -> None:
    setup_domain(two.a)
    run(two.a, "x-iommulab-owner-claim", device=IOMMU, owner="plane-a")
    with pytest.raises(ExecuteError, match="owned by 'plane-a'"):
        run(two.b, "x-iommulab-owner-claim", device=IOMMU, owner="plane-b")
    with pytest.raises(ExecuteError, match="still open"):
        run(two.b, "x-iommulab-owner-claim", device=IOMMU, owner="plane-b", force=True)
    two.a.close()  # the owner is gone (as a killed process's socket is closed)
    for _ in range(1000):  # QEMU notices the hang-up in its own time
        if not owner(two.b)["connected"]:
            break
    assert owner(two.b) == {
        "device": "/machine/peripheral/viommu0",
        "owner": "plane-a",
        "connected": False,
    }
    with pytest.raises(ExecuteError, match=r"connection is closed: .*.force."):
        run(two.b, "x-iommulab-owner-claim", device=IOMMU, owner="plane-b")
    got = run(two.b, "x-iommulab-owner-claim", device=IOMMU, owner="plane-b", force=True)
    assert got["owner"] == "plane-b" and got["connected"]
    run(
        two.b,
        "x-iommulab-unmap",
        iommu=IOMMU,
        domain=1,
        ranges=[{"iova": 0x100000, "size": PAGE}],
        owner="plane-b",
    )
    # a client reconnecting on the dead owner's monitor is a new connection
    two.a = QmpSession.connect(str(two.vm.qmp_path))
    with pytest.raises(ExecuteError, match="owned by 'plane-b'"):
        run(two.a, "x-iommulab-domain-free", iommu=IOMMU, domain=1)


def test_the_same_token_comes_back_after_a_reconnect(two: Two) -> None:
    run(two.a, "x-iommulab-owner-claim", device=IOMMU, owner="plane-a")
    two.reconnect_a()
    assert owner(two.a)["connected"] is False
    assert run(two.a, "x-iommulab-owner-claim", device=IOMMU, owner="plane-a")["connected"]


def test_handover_and_release(two: Two) -> None:
    run(two.a, "x-iommulab-owner-claim", device=IOMMU, owner="plane-a")
    with pytest.raises(ExecuteError, match="owned by 'plane-a'"):
        run(two.b, "x-iommulab-owner-transfer", device=IOMMU, owner="plane-b", to="plane-b")
    run(two.a, "x-iommulab-owner-transfer", device=IOMMU, owner="plane-a", to="plane-b")
    assert owner(two.b)["owner"] == "plane-b"
    with pytest.raises(ExecuteError, match="owned by 'plane-b'"):
        run(two.a, "x-iommulab-domain-alloc", iommu=IOMMU, domain=3, type="paging", owner="plane-a")
    run(two.b, "x-iommulab-domain-alloc", iommu=IOMMU, domain=3, type="paging", owner="plane-b")
    # the token moved the ownership to b's connection: a closing changes nothing
    two.a.close()
    with pytest.raises(ExecuteError, match="still open"):
        run(two.b, "x-iommulab-owner-claim", device=IOMMU, owner="other", force=True)
    with pytest.raises(ExecuteError, match="owned by 'plane-b'"):
        run(two.b, "x-iommulab-owner-release", device=IOMMU, owner="plane-a")
    run(two.b, "x-iommulab-owner-release", device=IOMMU, owner="plane-b")
    assert owner(two.b) == {"device": "/machine/peripheral/viommu0", "connected": False}
    run(two.b, "x-iommulab-domain-free", iommu=IOMMU, domain=3)  # open to all again
    with pytest.raises(ExecuteError, match="not owned"):
        run(two.b, "x-iommulab-owner-release", device=IOMMU, owner="plane-b")


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("x-iommulab-owner-claim", {"device": IOMMU, "owner": ""}, "'owner' must be 1 to 64"),
    ("x-iommulab-owner-claim", {"device": IOMMU, "owner": "o" * 65}, "'owner' must be 1 to 64"),
    ("x-iommulab-owner-claim", {"device": "edu0", "owner": "a"}, "not an iommulab vIOMMU"),
    ("x-iommulab-owner-claim", {"device": "nosuch", "owner": "a"}, "'nosuch' is not"),
    ("x-iommulab-owner-transfer", {"device": IOMMU, "owner": "a", "to": ""}, "'to' must be"),
    ("x-iommulab-owner-transfer", {"device": IOMMU, "owner": "a", "to": "b"}, "not owned"),
    ("x-iommulab-query-owner", {"device": "x" * 300}, "longer than 255"),
]


@pytest.mark.parametrize(("cmd", "args", "message"), BAD)
def test_bad_ownership_commands(two: Two, cmd: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(ExecuteError, match=message):
        run(two.a, cmd, **args)
    assert owner(two.b) == {"device": "/machine/peripheral/viommu0", "connected": False}
