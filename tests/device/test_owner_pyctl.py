"""pyctl's control planes own the vIOMMU (docs/reliability.md "Ownership"): a second
context on the same vIOMMU gets a clear error instead of resetting a device to blocked,
a killed one is taken over, the rebuild race of issue 11 cannot happen (the other
client's maps are refused), and from_hardware retries a device that changes under it
a bounded number of times, then says why."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from testvm import ViommuVm, needs_viommu

from pyctl.iommufd import BackendError, IommufdContext
from pyctl.iommufd.qmp_backend import QUERY_ATTEMPTS, QmpBackend
from pyctl.qemu.qmp import ExecuteError

pytestmark = needs_viommu

RW = 6
MIB = 1 << 20


@pytest.fixture
def vm() -> Iterator[ViommuVm]:
    with ViommuVm(devices=2) as v:
        yield v


def programmed(hw: QmpBackend) -> IommufdContext:
    ctx = IommufdContext(hw)
    ioas = ctx.ioas_alloc()
    dev = ctx.bind("edu0")
    ctx.attach(dev, ioas)
    ctx.ioas_map(ioas, 0x100000, 2 * MIB, RW, iova=0x4000_0000)
    return ctx


def edu0_mode(hw: QmpBackend) -> str:
    info = hw.session.cmd("x-iommulab-query", iommu="viommu0", mappings=False)
    return next(d["mode"] for d in info["devices"] if d.get("id") == "edu0")


def test_a_second_context_is_refused_and_changes_nothing(vm: ViommuVm) -> None:
    with QmpBackend(str(vm.qmp_path)) as a:
        programmed(a)
        b = QmpBackend(vm.qmp)
        before = b.query()
        with pytest.raises(BackendError, match=f"owned by '{a.owner}'.*connection is open"):
            IommufdContext(b)
        with pytest.raises(BackendError, match=f"owned by '{a.owner}'"):
            IommufdContext.from_hardware(b)
        assert b.query() == before  # read-only queries answer; nothing was reset
        assert edu0_mode(b) == "domain"
    # a's close released it: b owns it without a takeover
    ctx = IommufdContext.from_hardware(b)
    assert b.owner is not None and b.took_over_from is None
    assert ctx.check_hardware() == []


def test_a_killed_control_plane_is_taken_over(vm: ViommuVm) -> None:
    a = QmpBackend(str(vm.qmp_path))
    programmed(a)
    gone = a.owner
    a.session.close()  # as kill -9 leaves it: no release
    b = QmpBackend(vm.qmp)
    for _ in range(1000):  # QEMU sees the hang-up in its own time
        if not vm.qmp.cmd("x-iommulab-query-owner", device="viommu0")["connected"]:
            break
    ctx = IommufdContext.from_hardware(b)
    assert b.took_over_from == gone
    assert ctx.check_hardware() == []
    assert edu0_mode(b) == "domain"
    b.close()


def test_the_rebuild_race_cannot_happen(vm: ViommuVm) -> None:
    """Issue 11: a rebuild racing with another client's maps ended with both models wrong.
    The other client's maps are now refused while the rebuild reads."""
    with QmpBackend(str(vm.qmp_path)) as a:
        programmed(a)
    b = QmpBackend(vm.qmp)
    other = QmpBackend(str(vm.qmp_path))
    refused: list[str] = []
    real = b.execute

    def racing(command: str, args: Any = None) -> Any:
        out = real(command, args)
        if command == "x-iommulab-query" and b.owner is not None:
            m = {"iova": 0x8000_0000, "size": 4096, "addr": 0, "read": True, "write": True}
            try:
                other.session.cmd("x-iommulab-map", iommu="viommu0", domain=1, mappings=[m])
            except ExecuteError as e:
                refused.append(str(e))
        return out

    b.execute = racing  # type: ignore[method-assign]
    ctx = IommufdContext.from_hardware(b)
    b.execute = real  # type: ignore[method-assign]
    assert refused and all(f"owned by '{b.owner}'" in r for r in refused)
    assert ctx.check_hardware() == []
    other.close()
    b.close()


@pytest.mark.parametrize("changes", [1, 2 * QUERY_ATTEMPTS])  # 2 list reads an attempt
def test_from_hardware_retries_a_changing_device_then_says_why(vm: ViommuVm, changes: int) -> None:
    b = QmpBackend(vm.qmp)
    programmed(b)
    real = b.execute
    left = [changes]
    iova = [0x9000_0000]

    def moving(command: str, args: Any = None) -> Any:
        out = real(command, args)
        if command == "x-iommulab-query" and args.get("mappings") is False and left[0]:
            # between the list and its pages, the owner's token maps one more page
            left[0] -= 1
            m = {"iova": iova[0], "size": 4096, "addr": 0, "read": True, "write": True}
            iova[0] += 4096
            dom = out["domains"][0]["domain"]
            real("x-iommulab-map", {"iommu": "viommu0", "domain": dom, "mappings": [m],
                                    "owner": b.owner})  # fmt: skip
        return out

    b.execute = moving  # type: ignore[method-assign]
    if changes == 2 * QUERY_ATTEMPTS:
        with pytest.raises(BackendError, match=f"changed under {QUERY_ATTEMPTS} reads"):
            b.query()
    else:
        state = b.query()
        assert sum(m.size for m in state.domains[0].mappings) == 2 * MIB + 4096 * changes
    b.execute = real  # type: ignore[method-assign]
    b.close()
