"""The iommulab CLI through its real entry point (the last tests against a real QEMU)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyctl import cli
from pyctl.demo import parse_scenarios
from pyctl.tables import fmt, table


def test_views_need_a_qmp_socket(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["counters"]) == 1
    assert "give --qmp SOCKET" in capsys.readouterr().err


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of a failed command: exactly one ``error:`` line, no traceback."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_socket_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--qmp", "/nonexistent/qmp.sock", "devices"]) == 1
    assert "no QMP socket at /nonexistent/qmp.sock" in one_error_line(capsys)
    assert cli.main(["--qmp", "/nonexistent/qmp.sock", "objects"]) == 1
    assert "no QMP socket at /nonexistent/qmp.sock" in one_error_line(capsys)


def test_a_file_that_is_not_a_socket(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert cli.main(["--qmp", str(tmp_path / "notes.txt"), "counters"]) == 1
    assert "notes.txt is not a socket" in one_error_line(capsys)


def test_connection_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # a socket file nobody listens on (QEMU gone)
    try:
        for command in (["devices"], ["objects"], ["windows"]):
            assert cli.main(["--qmp", str(path), *command]) == 1
            line = one_error_line(capsys)
            assert f"cannot connect to QMP at {path}" in line and "Connection refused" in line
    finally:
        s.close()


def test_bad_timeout_is_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--timeout", "0", "--qmp", "x", "devices"])
    assert exc.value.code == 2
    assert "not a positive number of seconds: '0'" in capsys.readouterr().err


def test_bad_number_is_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--qmp", "x", "translate", "nvme0", "0xZZ"])
    assert exc.value.code == 2
    assert "not a number: '0xZZ'" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pyctl.cli", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("demo", "boot", "devices", "mappings", "faults", "picture"):
        assert name in res.stdout


def test_table_formats_addresses_and_flags() -> None:
    out = io.StringIO()
    table(
        [{"iova": 0x100000, "size": 4096, "read": True, "domain": None}],
        ["iova", "size", "read", "domain"],
        out,
    )
    header, row = out.getvalue().splitlines()
    assert header.split() == ["IOVA", "SIZE", "READ", "DOMAIN"]
    assert row.split() == ["0x100000", "0x1000", "yes", "-"]
    assert fmt(7) == "7"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines() -> None:
    plain = io.StringIO()
    p = cli.ProgressLine("mapping", plain)
    for done in range(0, 201 << 20, 1 << 20):
        p(done, 200 << 20)
    lines = plain.getvalue().splitlines()
    assert len(lines) == 101  # one per whole percent, none repeated
    assert lines[0] == "mapping: 0/200 MiB (0%)" and lines[-1] == "mapping: 200/200 MiB (100%)"
    tty = _Tty()
    p = cli.ProgressLine("mapping", tty)
    p(1 << 20, 2 << 20)
    p(2 << 20, 2 << 20)
    assert tty.getvalue() == "\rmapping: 1/2 MiB (50%)\rmapping: 2/2 MiB (100%)\n"


def test_scenario_syntax() -> None:
    s = parse_scenarios("nvme-probe,nvme-rw:size=64M")
    assert [x.name for x in s] == ["nvme-probe", "nvme-rw"]
    assert s[1].args == {"size": "64M"}


# ---------------------------------------------------------------- against QEMU
from testvm import (  # noqa: E402
    PseriesVm,
    ViommuVm,
    needs_ppc64,
    needs_viommu,
)

from pyctl.iommufd.qmp_backend import QmpBackend  # noqa: E402
from pyctl.qemu.qmp import QmpSession  # noqa: E402


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    rc = cli.main(argv, out)
    return rc, out.getvalue()


@needs_viommu
def test_map_ram_with_progress_then_objects(capsys: pytest.CaptureFixture[str]) -> None:
    with ViommuVm(devices=2, mem_mib=512) as vm:
        sock = str(vm.qmp_path)
        rc, text = _run(["--qmp", sock, "map-ram", "edu0", "--batch", "32M"])
        err = capsys.readouterr().err
        assert rc == 0, err
        progress = [ln for ln in err.splitlines() if ln.startswith("mapping guest RAM:")]
        assert len(progress) >= 15 and progress[-1].endswith("(100%)")
        assert "attached to IOAS 1 via HWPT" in text

        rc, text = _run(["--qmp", sock, "--json", "objects"])
        assert rc == 0
        rows = json.loads(text)
        by_type = {r["type"]: r for r in rows}
        ioas, hwpt, dev = by_type["IOAS"], by_type["HWPT_PAGING"], by_type["DEVICE"]
        assert ioas["hwpts"] == [hwpt["id"]] and hwpt["ioas"] == ioas["id"]
        assert hwpt["devices"] == [dev["id"]] and dev["hwpt"] == hwpt["id"]
        assert dev["device"].endswith("/edu0") and hwpt["flags"] == "auto"
        assert ioas["mapped"] > 500 << 20  # all of the 512 MiB but the holes
        rc, text = _run(["--qmp", sock, "objects"])
        assert rc == 0 and "HWPT_PAGING" in text and "blocked" not in text

        # a second map-ram of the same device has nothing to do, says so, changes nothing
        # (issue 11: resumable after a crash; it used to fail with "already bound")
        with QmpBackend(sock) as hw:
            before = hw.query()
        rc, text = _run(["--qmp", sock, "map-ram", "edu0"])
        assert rc == 0, capsys.readouterr().err
        assert text.startswith("nothing to do: DEVICE ") and "(edu0)" in text
        with QmpBackend(sock) as hw:
            assert hw.query() == before
        # and one that cannot finish (no such device) too
        rc, _ = _run(["--qmp", sock, "map-ram", "nosuch"])
        assert rc == 1 and "nosuch" in capsys.readouterr().err
        with QmpBackend(sock) as hw:
            assert hw.query() == before

        # a grouping the hardware contradicts is reported, not guessed
        rc, _ = _run(["--qmp", sock, "objects", "--shared", f"{hwpt['id']},77"])
        assert rc == 1
        assert "77 is not a paging domain" in capsys.readouterr().err


@needs_ppc64
def test_windows_and_decoded_entries(capsys: pytest.CaptureFixture[str]) -> None:
    with PseriesVm() as vm:
        qt = vm.qt
        sock = str(vm.qmp_path)
        rc, text = _run(["--qmp", sock, "--json", "windows"])
        assert rc == 0
        wins = json.loads(text)["windows"]
        assert [(w["index"], w["bus-offset"], w["size"], w["default"]) for w in wins] == [
            (0, 0, 1 << 30, True)
        ]
        liobn = wins[0]["liobn"]
        # a 64K-page window on edu1's PHB and two TCEs in the default window of PHB 0
        with QmpBackend(sock) as hw:
            hw.execute(
                "x-iommulab-spapr-window-create", {"phb": 1, "page-shift": 16, "size": 1 << 32}
            )
        assert qt.command(f"hcall 0x20 0x{liobn:x} 0x3000 0x5001")[0] == "0"
        assert qt.command(f"hcall 0x20 0x{liobn:x} 0x7000 0x9003")[0] == "0"
        rc, text = _run(["--qmp", sock, "--json", "windows", "--entries", "--device", "edu0"])
        assert rc == 0
        res = json.loads(text)
        assert [(e["bus"], e["addr"], e["read"], e["write"]) for e in res["entries"]] == [
            (0x3000, 0x5000, True, False),
            (0x7000, 0x9000, True, True),
        ]
        rc, text = _run(["--qmp", sock, "windows", "--device", "edu1"])
        assert rc == 0
        lines = text.splitlines()
        assert len(lines) == 3 and lines[2].split()[:2] == ["1", "1"]
        rc, text = _run(["--qmp", sock, "windows", "--entries"])
        rows = [ln.split() for ln in text.splitlines()]
        assert ["0", "7", "0x7000", "0x9000", "yes", "yes"] in rows
        assert _run(["--qmp", sock, "windows", "--phb", "9"])[0] == 1
        assert "no PHB 9" in capsys.readouterr().err
        assert _run(["--qmp", sock, "windows", "--device", "nosuch"])[0] == 1
        assert "nosuch" in capsys.readouterr().err


@needs_viommu
def test_errors_against_qemu_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with ViommuVm(devices=1) as vm:
        sock = str(vm.qmp_path)
        with QmpBackend(sock) as hw:
            hw.domain_alloc(1, "paging")
        # the picture draws the reserved regions the device reports (its MSI window)
        svg = vm.workdir / "d1.svg"
        assert _run(["--qmp", sock, "picture", "--domain", "1", "-o", str(svg)])[0] == 0
        assert ">MSI<" in svg.read_text()
        # the picture's output cannot be written: one line, nothing written
        rc, _ = _run(["--qmp", sock, "picture", "--domain", "1", "-o", "/missing-dir/x.svg"])
        assert rc == 1
        line = one_error_line(capsys)
        assert "cannot write /missing-dir/x.svg: No such file or directory" in line
        # QEMU refuses a command: its message, and which command
        assert _run(["--qmp", sock, "--iommu", "nosuch", "devices"])[0] == 1
        line = one_error_line(capsys)
        assert line.startswith("error: x-iommulab-query: ") and "nosuch" in line
        assert _run(["--qmp", sock, "translate", "nosuch", "0x1000"])[0] == 1
        assert "x-iommulab-translate: " in one_error_line(capsys)
        # the model refuses: one line too
        assert _run(["--qmp", sock, "map-ram", "nosuch"])[0] == 1
        assert "nosuch" in one_error_line(capsys)


@needs_viommu
def test_busy_monitor_times_out_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A monitor that has a client accepts a second connection but never greets it:
    --timeout ends the wait, for the views and for the model's commands alike."""
    with ViommuVm(devices=1) as vm, QmpSession.connect(str(vm.qmp_path)):
        sock = str(vm.qmp_path)
        for command in (["devices"], ["objects"]):
            assert _run(["--timeout", "0.5", "--qmp", sock, *command])[0] == 1
            line = one_error_line(capsys)
            assert f"no QMP greeting from {sock} within 0.5s" in line
            assert "another client" in line
    capsys.readouterr()


def test_boot_viommu_on_pseries_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert cli.main(["boot", "pseries", "--viommu"], out) == 1
    assert "--viommu is the q35 paging vIOMMU" in one_error_line(capsys)
    assert out.getvalue() == ""


@needs_ppc64
def test_map_ram_on_a_4g_pseries_through_stage2(capsys: pytest.CaptureFixture[str]) -> None:
    """pseries RAM covers 0xfee00000 (x86's MSI window): the s2 device reports no
    reserved region, so all 4 GiB map at IOVA = GPA (the model once guessed x86's
    window for every requester and stopped at 75%)."""
    with PseriesVm(second_phb=False, mem_mib=4096, devices=["iommulab-spapr-s2,id=s2"]) as vm:
        sock = str(vm.qmp_path)
        rc, text = _run(["--qmp", sock, "--iommu", "s2", "map-ram", "s2", "--batch", "256M"])
        assert "attached to IOAS" in text
        err = capsys.readouterr().err
        assert rc == 0, err
        assert err.splitlines()[-1].endswith("(100%)")
        with QmpBackend(sock, iommu="s2") as hw:
            (dom,) = hw.query().domains
            assert [(m.iova, m.size) for m in dom.mappings] == [(0, 4 << 30)]
            assert hw.translate("s2", 0xFEE00000, "write").addr == 0xFEE00000


@needs_viommu
def test_views_page_a_domain_larger_than_one_answer() -> None:
    """65,537 unmergeable mappings (one more than one unpaged answer carries): the
    mappings and domains views page them and show every one."""
    n = (1 << 16) + 1
    with ViommuVm(devices=1) as vm:
        sock = str(vm.qmp_path)
        with QmpBackend(sock) as hw:
            hw.domain_alloc(1, "paging")
            for b in range(0, n, 8192):
                maps = [
                    {"iova": i << 12, "size": 4096, "addr": i << 12, "read": True,
                     "write": bool(i % 2)}
                    for i in range(b, min(b + 8192, n))
                ]  # fmt: skip
                hw.execute("x-iommulab-map", {"iommu": "viommu0", "domain": 1, "mappings": maps})
        rc, text = _run(["--qmp", sock, "--json", "mappings"])
        assert rc == 0
        rows = json.loads(text)
        assert [(r["iova"], r["write"]) for r in rows] == [(i << 12, bool(i % 2)) for i in range(n)]
        rc, text = _run(["--qmp", sock, "--json", "domains"])
        assert rc == 0
        [dom] = json.loads(text)
        assert len(dom["mappings"]) == n
