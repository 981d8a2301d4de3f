"""One owner for a pseries PHB's host side (x-iommulab-owner-claim, docs/qmp.md).

While a PHB is owned, every x-iommulab-spapr-* command that changes its host side
(policy, window create/remove/reset, put-tces, set-blocked) needs the owner's token and
is refused without it or with another, naming the owner, with nothing changed; queries
stay open; another PHB and the guest (RTAS, hypercalls) are not affected.  qtest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from qemu.qmp import ExecuteError
from test_spapr_host_tces import SRC, GiB, TwoPhbs

from pyctl.qemu.pseries_qtest import H_PUT_TCE, H_SUCCESS, LIOBN0, LIOBN1

TOKEN = "spapr-model"
OK = SRC | 3


@pytest.fixture
def vm() -> Iterator[TwoPhbs]:
    p = TwoPhbs()
    try:
        yield p
    finally:
        p.close()


def changes(vm: TwoPhbs, liobn: int) -> list[tuple[str, dict[str, Any]]]:
    """Each state-changing command once, on PHB 0 (its LIOBN0 default window)."""
    return [
        ("x-iommulab-spapr-set-ddw-policy", {"phb": 0, "max-tces": 1 << 20}),
        ("x-iommulab-spapr-window-create", {"phb": 0, "page-shift": 16, "size": GiB}),
        ("x-iommulab-spapr-put-tces", {"liobn": liobn, "start": 0, "tces": [OK]}),
        ("x-iommulab-spapr-set-blocked", {"phb": 0, "blocked": True}),
        ("x-iommulab-spapr-set-blocked", {"phb": 0, "blocked": False}),
        ("x-iommulab-spapr-window-remove", {"phb": 0, "liobn": LIOBN1}),
        ("x-iommulab-spapr-window-reset", {"phb": 0}),
    ]


def state(vm: TwoPhbs) -> Any:
    return vm.cmd("x-iommulab-spapr-query-phbs"), vm.tces(LIOBN0, 0, 4)


def test_owned_phb_needs_the_token(vm: TwoPhbs) -> None:
    path = vm.phb(0)["path"]
    vm.qmp.cmd("x-iommulab-owner-claim", device=path, owner=TOKEN)
    for name, args in changes(vm, LIOBN0):
        before = state(vm)
        for token in (None, "someone-else"):
            extra = {} if token is None else {"owner": token}
            with pytest.raises(ExecuteError) as e:
                vm.qmp.cmd(name, **args, **extra)
            assert TOKEN in str(e.value), (name, str(e.value))
            assert state(vm) == before, name
        vm.qmp.cmd(name, **args, owner=TOKEN)  # the owner's token: done
    # queries stay open
    vm.cmd("x-iommulab-spapr-read-tces", liobn=LIOBN0, count=1)
    vm.cmd("x-iommulab-query-hw-info", device="edu0")
    # PHB 1 is not owned; the guest is not the host side
    liobn1 = vm.phb(1)["liobns"][0]
    vm.put(liobn1, 0, [OK])
    vm.cmd("x-iommulab-spapr-set-blocked", phb=1, blocked=True)
    assert vm.hcall(H_PUT_TCE, LIOBN0, 0x3000, OK)[0] == H_SUCCESS
    # released: open to all again
    vm.qmp.cmd("x-iommulab-owner-release", device=path, owner=TOKEN)
    vm.put(LIOBN0, 1, [OK])
    assert vm.tces(LIOBN0, 0, 4) == [0, OK, 0, OK]  # (the reset above cleared TCE 0)
