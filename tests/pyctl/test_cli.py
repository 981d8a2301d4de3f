"""The iommulab CLI through its real entry point (no QEMU needed for these)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from pyctl import cli
from pyctl.demo import parse_scenarios
from pyctl.tables import fmt, table


def test_views_need_a_qmp_socket(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["counters"]) == 1
    assert "give --qmp SOCKET" in capsys.readouterr().err


def test_missing_socket_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--qmp", "/nonexistent/qmp.sock", "devices"]) == 1
    assert "no QMP socket at /nonexistent/qmp.sock" in capsys.readouterr().err


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


def test_scenario_syntax() -> None:
    s = parse_scenarios("nvme-probe,nvme-rw:size=64M")
    assert [x.name for x in s] == ["nvme-probe", "nvme-rw"]
    assert s[1].args == {"size": "64M"}
