"""Recovery after kill -9 of the control plane (issue 11, item 5).

The kill sweep runs ``iommulab map-ram`` in a subprocess (tests/lib/killpoint.py,
the CLI with a test-only hook) and kills it with SIGKILL after each of its QMP
commands in turn, each time on a fresh paused q35 (ViommuVm).  After each kill one
``iommulab map-ram`` finishes the job, ``iommulab orphans --reclaim`` frees
what the crash left, and the device holds what an uninterrupted run leaves
(the same domains' mappings, the device attached), which the vIOMMU's own
translation confirms.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from testvm import (
    PseriesVm,
    ViommuVm,
    needs_ppc64,
    needs_viommu,
)

from pyctl import cli
from pyctl.iommufd import InMemoryBackend, IommufdContext, IommulabHwptData, x86_device
from pyctl.iommufd.backend import HwState, MapEntry
from pyctl.iommufd.guestmap import GuestRamConflict, GuestRamMap
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.iommufd.recover import attachment, orphans, reclaim
from pyctl.iommufd.uapi import FIXED_IOVA, NEST_PARENT, READABLE, HwptDataType

MIB = 1 << 20
RW = 7  # FIXED_IOVA | WRITEABLE | READABLE
KILLPOINT = Path(__file__).parents[1] / "lib" / "killpoint.py"
MAP_RAM = ["map-ram", "edu0", "--batch", "32M"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    rc = cli.main(argv, out)
    return rc, out.getvalue(), capsys.readouterr().err


# ---------------------------------------------------------------- the model alone
def _nested_data() -> IommulabHwptData:
    return IommulabHwptData(s1_root=0x4000)


def test_orphans_of_a_rebuilt_context() -> None:
    """Domains no device uses are orphans; a NEST_PARENT whose children all are, too;
    a named NEST_PARENT and a domain sharing an attached domain's IOAS are not."""
    hw = InMemoryBackend([x86_device("edu0", nesting=True), x86_device("edu1", nesting=True)])
    ctx = IommufdContext(hw)
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    d0, d1 = ctx.bind("edu0"), ctx.bind("edu1")
    ctx.ioas_map(a, 0x100000, 2 * MIB, RW, iova=0x100000)
    used = ctx.attach(d0, a)
    lone = ctx.hwpt_alloc(d0, b)  # HWPT_ALLOC, then the crash before the attach
    parent = ctx.hwpt_alloc(d1, b, flags=NEST_PARENT)
    child = ctx.hwpt_alloc(
        d1, parent, data_type=HwptDataType.IOMMU_HWPT_DATA_IOMMULAB, data=_nested_data()
    )
    kept = ctx.hwpt_alloc(d1, a, flags=NEST_PARENT)  # named below: kept
    with_dev_parent = ctx.hwpt_alloc(d1, b, flags=NEST_PARENT)
    ctx.attach(d1, with_dev_parent)  # attached itself: its (absent) children do not matter
    before = hw.query()

    # kept: named as a NEST_PARENT, or grouped with the attached domain's IOAS
    for named, keep in (
        (IommufdContext.from_hardware(hw, nest_parents=[kept]), [kept]),
        (IommufdContext.from_hardware(hw, shared=[[used, kept]]), []),
    ):
        found = orphans(named, keep=keep)
        assert [(o.domain, o.type) for o in found] == [
            (child, "nested"),
            (lone, "paging"),
            (parent, "paging"),
        ]
    # neither: a NEST_PARENT nothing uses is an orphan too
    again = IommufdContext.from_hardware(hw)
    assert kept in {o.domain for o in orphans(again)}
    found = orphans(again, keep=[kept])
    dev = attachment(again, "edu0")
    assert dev is not None and dev.hwpt_id == used and dev.ioas_id is not None
    assert again.areas(dev.ioas_id)[0].iova == 0x100000
    assert hw.query() == before  # listing changes nothing

    freed = reclaim(again, found)
    assert [o.domain for o in freed] == [child, lone, parent]
    assert {d.domain for d in hw.query().domains} == {used, kept, with_dev_parent}
    assert again.check_hardware() == []
    assert orphans(IommufdContext.from_hardware(hw, nest_parents=[kept]), keep=[kept]) == []
    assert [o.domain for o in orphans(IommufdContext.from_hardware(hw))] == [kept]


class _FakeRam:
    """guest_ram()'s QMP: two RAM ranges, [0, 1 MiB) and [4 MiB, 12 MiB)."""

    def cmd(self, cmd: str, **args: object) -> str:
        assert cmd == "human-monitor-command"
        return (
            'FlatView #0\n AS "memory", root: system\n Root memory region: system\n'
            "  0000000000000000-00000000000fffff (prio 0, ram): low\n"
            "  0000000000400000-0000000000bfffff (prio 0, ram): high\n"
        )


def test_resume_maps_only_the_gaps_and_refuses_other_mappings() -> None:
    hw = InMemoryBackend([x86_device("edu0")])
    ctx = IommufdContext(hw)
    ioas = ctx.ioas_alloc()
    ctx.attach(ctx.bind("edu0"), ioas)
    ctx.ioas_map(ioas, 0x600000, 2 * MIB, RW, iova=0x600000)  # in the middle of "high"
    ctx.ioas_map(ioas, 0, MIB, RW, iova=0)  # all of "low"
    ram = GuestRamMap(ctx, ioas, _FakeRam(), batch=MIB)
    gaps = ram.resume()
    assert [(r.name, s, n) for r, s, n in gaps] == [
        ("high", 0x400000, 2 * MIB),
        ("high", 0x800000, 4 * MIB),
    ]
    assert [(a.iova, a.length) for a in ctx.areas(ioas)][:2] == [(0, MIB), (0x400000, MIB)]
    assert sum(a.length for a in ctx.areas(ioas)) == 9 * MIB  # 6 new 1 MiB pieces
    assert ram.resume() == []  # nothing left

    # a guest RAM address mapped elsewhere, or read-only: refused, nothing changed
    for phys, flags in ((0x20000000, RW), (0xA00000, FIXED_IOVA | READABLE)):
        ctx2 = IommufdContext(InMemoryBackend([x86_device("edu0")]))
        io2 = ctx2.ioas_alloc()
        ctx2.ioas_map(io2, phys, MIB, flags, iova=0xA00000)
        before = ctx2.areas(io2)
        with pytest.raises(GuestRamConflict, match=r"guest RAM high \[0x400000, 0xbfffff\]"):
            GuestRamMap(ctx2, io2, _FakeRam()).resume()
        assert ctx2.areas(io2) == before


# ---------------------------------------------------------------- against QEMU
def _shape(state: HwState) -> tuple[object, ...]:
    """The state without domain ids (a resumed run allocates other ones)."""
    doms = {d.domain: d for d in state.domains}
    return (
        sorted((d.type, d.ias, d.devices, d.children, d.mappings) for d in state.domains),
        [
            (dv.device, dv.mode, doms[dv.domain].mappings if dv.domain is not None else None)
            for dv in state.devices
        ],
    )


def _killed_run(
    sock: str, env: dict[str, str], argv: list[str] = MAP_RAM
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(KILLPOINT), "--qmp", sock, *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HwState, list[str]]]:
    """An uninterrupted map-ram: the state it leaves and the QMP commands it sends."""
    log = tmp_path_factory.mktemp("killpoint") / "qmp.log"
    with ViommuVm(devices=2, mem_mib=512) as vm:
        res = _killed_run(str(vm.qmp_path), {"IOMMULAB_QMP_LOG": str(log)})
        assert res.returncode == 0, res.stderr
        with QmpBackend(str(vm.qmp_path)) as hw:
            yield hw.query(), log.read_text().split()


@needs_viommu
def test_kill_points_cover_every_step(reference: tuple[HwState, list[str]]) -> None:
    state, commands = reference
    assert len(commands) >= 17
    # bind (blocked), HWPT alloc, attach, the RAM read, then one map per 32 MiB batch
    reads = ("x-iommulab-query", "x-iommulab-query-hw-info", "x-iommulab-query-owner")
    steps = [c for c in commands if c not in reads]
    # the control plane owns the vIOMMU while it works (a killed one is taken over)
    assert steps[0] == "x-iommulab-owner-claim" and steps[-1] == "x-iommulab-owner-release"
    steps = steps[1:-1]
    assert steps[:4] == [
        "x-iommulab-attach",
        "x-iommulab-domain-alloc",
        "x-iommulab-attach",
        "human-monitor-command",
    ]
    assert steps[4:] == ["x-iommulab-map"] * len(steps[4:]) and len(steps[4:]) >= 16
    (dom,) = state.domains
    # all but the hole [0xc0000, 0x100000)
    assert sum(m.size for m in dom.mappings) == 512 * MIB - 256 * 1024


@needs_viommu
def test_kill_sweep_map_ram(
    reference: tuple[HwState, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL after every QMP command of map-ram; one map-ram finishes, reclaim leaves no
    orphan, the hardware equals an uninterrupted run's, DMA of guest RAM translates."""
    ref, commands = reference
    first_alloc = commands.index("x-iommulab-domain-alloc") + 1
    orphaned: list[int] = []
    for n in range(1, len(commands) + 1):
        with ViommuVm(devices=2, mem_mib=512) as vm:
            sock = str(vm.qmp_path)
            killed = _killed_run(sock, {"IOMMULAB_KILL_AFTER": str(n)})
            assert killed.returncode == -signal.SIGKILL, (n, killed.stderr)

            rc, text, err = _run(["--qmp", sock, *MAP_RAM], capsys)
            assert rc == 0, (n, err)
            assert "attached to IOAS" in text or text.startswith("nothing to do"), (n, text)
            # the domain allocated before the kill is left alone, and pointed at
            assert ("note: 1 orphan domain(s)" in err) == (n == first_alloc), (n, err)
            if n == len(commands):  # killed after its last map: all was done
                assert text.startswith("nothing to do"), text
            rc, text, err = _run(["--qmp", sock, "orphans", "--reclaim"], capsys)
            assert rc == 0, (n, err)
            if text.startswith("freed domain"):
                orphaned.append(n)
            else:
                assert text == "no orphan domains\n", (n, text)
            assert _run(["--qmp", sock, "orphans"], capsys)[1] == "no orphan domains\n"
            # a third map-ram finds the job done
            rc, text, _ = _run(["--qmp", sock, *MAP_RAM], capsys)
            assert rc == 0 and text.startswith("nothing to do"), (n, text)

            with QmpBackend(sock) as hw:
                assert _shape(hw.query()) == _shape(ref), n
                for gpa in (0x1000, 0x100000, 0x12345000, 512 * MIB - 4096):
                    t = hw.translate("edu0", gpa, "write")
                    assert t.allowed and t.addr == gpa, (n, gpa, t)
                assert not hw.translate("edu0", 0xC0000, "read").allowed  # the hole
    # only the crash between HWPT allocation and attach leaves an orphan
    assert orphaned == [first_alloc]


@needs_ppc64
def test_kill_sweep_pseries_stage2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same on pseries through the stage-2 device (the PHB's PE): every kill point of
    map-ram of 1 GiB in 128 MiB batches, then map-ram and orphans --reclaim."""
    argv = ["--iommu", "s2", "map-ram", "s2", "--batch", "128M"]

    def vm() -> PseriesVm:
        return PseriesVm(second_phb=False, mem_mib=1024, devices=["iommulab-spapr-s2,id=s2"])

    log = tmp_path / "qmp.log"
    with vm() as v:
        res = _killed_run(str(v.qmp_path), {"IOMMULAB_QMP_LOG": str(log)}, argv)
        assert res.returncode == 0, res.stderr
        with QmpBackend(str(v.qmp_path), iommu="s2") as hw:
            ref = hw.query()
    commands = log.read_text().split()
    assert commands.count("x-iommulab-map") == 8
    orphaned = []
    for n in range(1, len(commands) + 1):
        with vm() as v:
            sock = str(v.qmp_path)
            killed = _killed_run(sock, {"IOMMULAB_KILL_AFTER": str(n)}, argv)
            assert killed.returncode == -signal.SIGKILL, (n, killed.stderr)
            rc, _, err = _run(["--qmp", sock, *argv], capsys)
            assert rc == 0, (n, err)
            rc, text, err = _run(["--qmp", sock, "--iommu", "s2", "orphans", "--reclaim"], capsys)
            assert rc == 0, (n, err)
            if text != "no orphan domains\n":
                orphaned.append(n)
            with QmpBackend(sock, iommu="s2") as hw:
                assert _shape(hw.query()) == _shape(ref), n
                for gpa in (0, 0x12345000, (1 << 30) - 4096):
                    t = hw.translate("s2", gpa, "write")
                    assert t.allowed and t.addr == gpa, (n, gpa, t)
    assert orphaned == [commands.index("x-iommulab-domain-alloc") + 1]


@needs_viommu
def test_map_ram_refuses_ram_mapped_differently(capsys: pytest.CaptureFixture[str]) -> None:
    with ViommuVm(devices=1, mem_mib=128) as vm:
        sock = str(vm.qmp_path)
        with QmpBackend(sock) as hw:
            ctx = IommufdContext(hw)
            ioas = ctx.ioas_alloc()
            dev = ctx.bind("edu0")
            ctx.ioas_map(ioas, 0x200000, MIB, RW, iova=0x100000)  # IOVA != GPA
            ctx.attach(dev, ioas)
            before = hw.query()
        rc, text, err = _run(["--qmp", sock, *MAP_RAM], capsys)
        assert rc == 1 and text == ""
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: guest RAM pc.ram"), err
        assert "IOVA 0x100000+0x100000 -> 0x200000" in lines[0]
        with QmpBackend(sock) as hw:
            assert hw.query() == before


@needs_viommu
def test_map_ram_bad_batch_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with ViommuVm(devices=1, mem_mib=128) as vm:
        sock = str(vm.qmp_path)
        with QmpBackend(sock) as hw:
            before = hw.query()
        rc, text, err = _run(["--qmp", sock, "map-ram", "edu0", "--batch", "1000"], capsys)
        assert rc == 1 and text == ""
        assert err == "error: --batch 1000 must be a positive multiple of 4096\n"
        with QmpBackend(sock) as hw:
            assert hw.query() == before


@needs_viommu
def test_map_ram_resumes_a_bound_blocked_device(capsys: pytest.CaptureFixture[str]) -> None:
    """--blocked adopts a device bound and left blocked: attached to a new IOAS, mapped."""
    with ViommuVm(devices=1, mem_mib=128) as vm:
        sock = str(vm.qmp_path)
        rc, text, err = _run(["--qmp", sock, "map-ram", "edu0", "--blocked", "edu0"], capsys)
        assert rc == 0, err
        assert "resumed: adopted the bound device, mapped the missing 127 MiB" in text
        with QmpBackend(sock) as hw:
            (dom,) = hw.query().domains
            assert hw.translate("edu0", 0x7FFF000, "write").addr == 0x7FFF000
            assert dom.devices == 1


@needs_viommu
def test_orphans_against_qemu(capsys: pytest.CaptureFixture[str]) -> None:
    with ViommuVm(devices=1, mem_mib=128) as vm:
        sock = str(vm.qmp_path)
        assert _run(["--qmp", sock, *MAP_RAM], capsys)[0] == 0
        with QmpBackend(sock) as hw:
            hw.domain_alloc(20, "paging")
            hw.map(20, [MapEntry(0x10000, 0x20000, 0x10000, True, True)])
            hw.domain_alloc(21, "paging")
            hw.domain_alloc(22, "nested", parent=21, s1_root=0x8000)
            hw.domain_alloc(23, "paging")
            attached = hw.query()
        rc, text, _ = _run(["--qmp", sock, "--json", "orphans"], capsys)
        assert rc == 0
        assert [(o["domain"], o["type"], o["mappings"]) for o in json.loads(text)] == [
            (22, "nested", 0),
            (20, "paging", 1),
            (21, "paging", 0),
            (23, "paging", 0),
        ]
        # map-ram notes them (23 named as a NEST_PARENT to keep)
        rc, text, err = _run(["--qmp", sock, *MAP_RAM, "--nest-parent", "23"], capsys)
        assert rc == 0 and text.startswith("nothing to do")
        assert "note: 3 orphan domain(s) (22, 20, 21)" in err
        rc, text, err = _run(["--qmp", sock, "orphans", "--reclaim", "--nest-parent", "23"], capsys)
        assert rc == 0, err
        assert text.splitlines() == [
            "freed domain 22 (nested, parent 21)",
            "freed domain 20 (paging, 1 mapping(s), 0 MiB)",
            "freed domain 21 (paging, 0 mapping(s), 0 MiB)",
        ]
        with QmpBackend(sock) as hw:
            now = hw.query()
            assert {d.domain for d in now.domains} == {d.domain for d in attached.domains} - {
                20,
                21,
                22,
            }
            assert now.devices == attached.devices
        rc, text, _ = _run(["--qmp", sock, "orphans", "--nest-parent", "23"], capsys)
        assert rc == 0 and text == "no orphan domains\n"
