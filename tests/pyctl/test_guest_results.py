"""Scenario specs on the kernel command line and the agent's result lines."""

from __future__ import annotations

import pytest

from pyctl.guest.results import (
    DdwWindow,
    DefaultWindow,
    Scenario,
    ScenarioError,
    cmdline_arg,
    parse_done,
    parse_results,
)

CONSOLE = """\
[    0.000000] Linux version 6.12.107+deb13-powerpc64le
IOMMULAB-RESULT {"scenario": "boot", "ok": true, "release": "6.12.107+deb13-powerpc64le"}
[    3.1] nvme nvme0: 1/0/0 default/read/poll queues
IOMMULAB-RESULT {"scenario": "nvme-rw", "ok": true, "size": 16777216, "write_mibs": 145.5}
[    3.2] random kernel line IOMMULAB-RESULT {"scenario": "nvme-probe", "ok": false, "error": "x"}
IOMMULAB-RESULT {"scenario": "nvme-rw", "ok": tr
IOMMULAB-RESULT ["not", "an", "object"]
IOMMULAB-DONE {"scenarios": 3, "failed": 1, "uptime_s": 6.4}
[    6.5] reboot: Power down
"""


def test_results_are_parsed_in_order_and_garbage_becomes_a_failure() -> None:
    res = parse_results(CONSOLE)
    assert [r["scenario"] for r in res] == ["boot", "nvme-rw", "nvme-probe", "?", "?"]
    assert res[1]["write_mibs"] == 145.5
    assert res[2]["ok"] is False, "a result after kernel text on the same line still counts"
    assert res[3]["ok"] is False and "unparsable" in res[3]["error"]
    assert res[4]["ok"] is False and "bad result" in res[4]["error"]


def test_kernel_text_after_the_json_on_the_same_line_is_ignored() -> None:
    res = parse_results('IOMMULAB-RESULT {"scenario": "a", "ok": true}[    6.5] reboot\n')
    assert res == [{"scenario": "a", "ok": True}]


def test_truncated_line_is_not_a_result_but_a_failure() -> None:
    res = parse_results('IOMMULAB-RESULT {"scenario": "x", "ok": true, "a": [}\n')
    assert res == [{"scenario": "?", "ok": False, "error": res[0]["error"]}]
    assert "unparsable" in res[0]["error"]
    assert parse_results("IOMMULAB-RESULT\n") == [], "a marker without payload is no result"


def test_firmware_messages_inside_an_agent_line_are_taken_out() -> None:
    # as seen on a loaded PowerNV9: skiboot's log cut the selftests' result line in two
    console = (
        'IOMMULAB-RESULT {"scenario": "s", "ok": false, "failed": ["a.iova_'
        "[   15.245035974,4] SBE: Timer is lagging, increasing polling rate.\n"
        'ranges", "b"]}\n'
        "[   13.841584] reboot: Power down\n"
        "[   15.415290209,5] OPAL: Shutdown request type 0x0...\n"
        'IOMMULAB-DONE {"scenarios": 1, "failed": 1}\n'
    )
    assert parse_results(console) == [
        {"scenario": "s", "ok": False, "failed": ["a.iova_ranges", "b"]}
    ]
    assert parse_done(console) == {"scenarios": 1, "failed": 1}
    # the kernel's own timestamps (six decimals, no level) are left alone
    kernel = '[    3.100000] x IOMMULAB-RESULT {"scenario": "k", "ok": true}\n'
    assert parse_results(kernel) == [{"scenario": "k", "ok": True}]


def test_done_line() -> None:
    assert parse_done(CONSOLE) == {"scenarios": 3, "failed": 1, "uptime_s": 6.4}
    assert parse_done("no marker here") is None


def test_cmdline_arg_and_validation() -> None:
    arg = cmdline_arg([Scenario("nvme-probe"), Scenario("nvme-rw", {"size": "64M"})])
    assert arg == "iommulab.run=nvme-probe,nvme-rw:size=64M"
    with pytest.raises(ScenarioError, match="unknown scenario 'nvme-rwx'"):
        cmdline_arg([Scenario("nvme-rwx")])
    assert cmdline_arg([Scenario("bogus")], check_known=False) == "iommulab.run=bogus"
    with pytest.raises(ScenarioError, match="no scenarios"):
        cmdline_arg([])
    for bad in ("a b", "a,b", "a:b", "x=y", ""):
        with pytest.raises(ScenarioError):
            Scenario(bad)
    with pytest.raises(ScenarioError):
        Scenario("nvme-rw", {"size": "1M,dmesg-iommu"})


def test_ddw_property_decodes_the_kernel_struct() -> None:
    # As read from a pseries guest: liobn 0x80000001, window at 1<<59, 16M pages, 1 GiB.
    w = DdwWindow.from_hex(
        "/pci@800000020000000/linux,direct64-ddr-window-info",
        "80000001000000000800000000000000000000180000001e",
    )
    assert (w.liobn, w.dma_base, w.tce_shift, w.window_shift) == (0x80000001, 1 << 59, 24, 30)
    assert w.size == 1 << 30 and w.direct
    with pytest.raises(ValueError, match="24"):
        DdwWindow.from_hex("p", "00" * 20)


def test_default_window_decodes_ibm_dma_window() -> None:
    w = DefaultWindow.from_hex(
        "/pci@800000020000000/ibm,dma-window", "80000000" + "00" * 8 + "40000000".rjust(16, "0")
    )
    assert (w.liobn, w.offset, w.size) == (0x80000000, 0, 1 << 30)
    with pytest.raises(ValueError, match="20"):
        DefaultWindow.from_hex("p", "00" * 24)
