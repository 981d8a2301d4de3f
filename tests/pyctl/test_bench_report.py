"""The benchmark's pure parts: what a boot's results become (pyctl.bench.dataplane) and the
page with its charts (pyctl.bench.report), from made-up results."""

from __future__ import annotations

from typing import Any

import pytest

from pyctl.bench.dataplane import CONFIG_BY_NAME, CONFIGS, Plan, evidence_of, metrics_of
from pyctl.bench.dma import annotate_count
from pyctl.bench.report import render
from pyctl.guest.results import KNOWN_SCENARIOS, cmdline_arg


def rw(read: float, write: float) -> dict[str, Any]:
    return {"scenario": "nvme-rw", "ok": True, "read_mibs": read, "write_mibs": write}


def boot_results(
    scale: float, domain: str | None = None, io: float | None = 100.0
) -> list[dict[str, Any]]:
    return [
        {"scenario": "boot", "ok": True},
        rw(1.0, 1.0),  # the warm-up: never reported
        rw(600 * scale, 200 * scale),
        rw(20 * scale, 10 * scale),
        {"scenario": "nvme-randread", "ok": True, "iops": 50.0 * scale,
         "io_iops": None if io is None else io * scale, "iommu_domain": domain},
        {"scenario": "dmesg-iommu", "ok": True, "lines": []},
    ]  # fmt: skip


def test_plan_runs_a_dropped_warm_up_then_the_measured_scenarios() -> None:
    sc = Plan("64M", "8M", 50).scenarios(seed=3)
    assert [s.name for s in sc] == [
        "nvme-rw", "nvme-rw", "nvme-rw", "nvme-randread", "dmesg-iommu",
    ]  # fmt: skip
    assert sc[0] == sc[1] and sc[1].args == {"size": "64M", "bs": "1M"}
    assert sc[2].args == {"size": "8M", "bs": "4K"}
    assert sc[3].args == {"count": "50", "span": "64M", "seed": "3"}
    assert all(s.name in KNOWN_SCENARIOS for s in sc)
    assert cmdline_arg(sc).startswith("iommulab.run=nvme-rw:size=64M:bs=1M,")


def test_metrics_skip_the_warm_up_and_keep_an_unmeasured_figure_empty() -> None:
    m = metrics_of(boot_results(1.0, io=None))
    assert m == {
        "read_1m": 600.0, "write_1m": 200.0, "read_4k": 20.0, "write_4k": 10.0,
        "randread_iops": None, "randread_e2e": 50.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="expected 3 nvme-rw"):
        metrics_of(boot_results(1.0)[:3])


def test_a_peer_boot_counts_only_with_the_domain_type_of_its_policy() -> None:
    strict, lazy = CONFIG_BY_NAME["q35-intel-strict"], CONFIG_BY_NAME["q35-virtio-lazy"]
    assert evidence_of(strict, boot_results(1, "DMA")) == ({"guest_iommu_domain": "DMA"}, "")
    assert evidence_of(lazy, boot_results(1, "DMA-FQ"))[1] == ""
    why = evidence_of(lazy, boot_results(1, "DMA"))[1]
    assert "DMA IOMMU domain, not DMA-FQ (lazy)" in why
    assert "None IOMMU domain" in evidence_of(strict, boot_results(1, None))[1]
    # the lab's guests and the baseline have no IOMMU group: nothing to check
    assert evidence_of(CONFIG_BY_NAME["q35-lab-s2"], boot_results(1, None))[1] == ""


def sample(config: str, rnd: int, scale: float, error: str | None = None) -> dict[str, Any]:
    return {
        "config": config, "round": rnd, "error": error, "seconds": 20.0,
        "metrics": {} if error else metrics_of(boot_results(scale)),
        "evidence": {"guest_iommu_domain": "DMA"}, "load_before": [2.0, 1, 1],
        "load_after": [3.0, 1, 1],
    }  # fmt: skip


def fake_run(quick: bool) -> dict[str, Any]:
    scale = {
        "q35-none": 1.0,
        "q35-lab-s2": 1.0,
        "q35-intel-strict": 0.5,
        "pseries-stock": 0.8,
        "pseries-lab-s2": 0.8,
    }
    samples = [sample(c, r, scale[c] * (1 + 0.1 * r)) for r in range(3) for c in scale] + [
        sample("q35-virtio-lazy", 0, 1.0, error="the guest gave its NVMe a DMA domain")
    ]
    return {
        "command": "scripts/bench-lab.py --quick" if quick else "scripts/bench-lab.py",
        "quick": quick, "started": "2026-12-02 07:20 UTC", "finished": "2026-12-02 07:40 UTC",
        "host": {"cpus": 2, "uname": "Linux", "qemu": "10.0.13"},
        "plan": Plan().__dict__, "rounds": 3, "samples": samples,
        "core": {"callgrind": {"hit (per translation)": 38}},
        "dma": {"q35-none": 1000, "q35-lab-s2": 1100, "pseries-stock": "RuntimeError: x"},
        "control": [
            {"script": "bench-qmp.py", "args": [], "output": "rt 120.0 us\n",
             "figures": ["rt 120.0 us"]},
            {"script": "bench-qmp-input.py", "args": [], "error": "exit 2: usage: a | b\n   more"},
        ],
    }  # fmt: skip


def test_page_has_the_ratios_the_comparisons_and_the_load() -> None:
    page, svgs = render(fake_run(quick=False))
    assert "Quick run" not in page
    assert set(svgs) == {
        "perf-q35-ratio.svg", "perf-q35-mibs.svg", "perf-q35-4k.svg", "perf-pseries-mibs.svg",
        "perf-pseries-ratio.svg",
    }  # fmt: skip
    for name in svgs:
        assert f"(img/{name})" in page
    # medians with their ranges: read 1M of no IOMMU is 600, 660, 720
    assert "| no IOMMU | **660** <sub>600-720</sub> |" in page
    # ratios of the same run: intel strict is half as fast, the lab as fast
    assert "| intel-iommu strict | **0.50**x <sub>0.42-0.60</sub> |" in page
    assert "| iommulab stage 2 / intel-iommu strict | **2.00**x" in page
    assert "not like for like" in page and "like for like" in page
    assert "median 2.5, min 2.0, max 3.0 on 2 CPUs" in page
    # a boot that did not count is named, with why
    assert "q35-virtio-lazy round 0: the guest gave its NVMe a DMA domain" in page
    assert "| hit (per translation) | 38 |" in page
    assert "| q35, iommulab stage 2 | 1,100 | 1.10x |" in page
    assert "| pseries, TCE | not measured: RuntimeError: x | |" in page
    assert "| `bench-qmp.py` | rt 120.0 us |" in page
    # a multi-line error stays in its table cell
    assert "| `bench-qmp-input.py` | not run: exit 2: usage: a \\| b more |" in page
    # every configuration's per-I/O work is stated
    for c in CONFIGS:
        assert f"| {c.label} | {c.per_io} |" in page


def test_quick_page_says_so() -> None:
    page, _ = render(fake_run(quick=True))
    assert "**Quick run**" in page and "scripts/bench-lab.py --quick" in page


def test_a_run_without_data_path_still_renders() -> None:
    run = fake_run(quick=False)
    del run["samples"]
    page, svgs = render(run)
    assert svgs == {} and "## Instruction counts" in page and "## q35" not in page


def test_callgrind_annotate_line_is_found_by_function_name() -> None:
    text = (
        "--------\n"
        "12,345 (1.2%)  ???:edu_dma_timer_other [qemu]\n"
        "  40,210 (3.1%)  ../hw/misc/edu.c:edu_dma_timer [/x/qemu-system-x86_64]\n"
    )
    assert annotate_count(text, "edu_dma_timer") == 40210
    with pytest.raises(RuntimeError, match="h_put_tce not in the callgrind profile"):
        annotate_count(text, "h_put_tce")


def test_headline_gives_the_ratios_first() -> None:
    page, _ = render(fake_run(quick=False))
    head = page.split("## What is compared")[0]
    assert "- NVMe read, 1 MiB blocks: iommulab stage 2 **1.00x**" in head
    assert "intel-iommu strict **0.50x** (0.42-0.60) of no IOMMU" in head
    assert "relative to no IOMMU (1,000): iommulab stage 2 **1.10x**" in head


def test_a_run_cut_short_says_how_many_rounds_ran() -> None:
    run = fake_run(quick=False)
    assert "Cut short" not in render(run)[0]
    run["rounds"] = 5
    page, svgs = render(run)
    assert "**Cut short:** 3 of the 5 planned data-path rounds ran" in page
    assert "median of 3 interleaved rounds" in svgs["perf-q35-ratio.svg"]


def test_pseries_evidence_says_whether_the_kernel_direct_mapped_a_ddw() -> None:
    cfg = CONFIG_BY_NAME["pseries-stock"]
    res = boot_results(1.0)
    assert evidence_of(cfg, res)[0]["ddw"] == "none"
    res[-1]["dt_windows"] = [{"path": "/pci@8/linux,dma64-ddr-window-info", "hex": "00"}]
    assert evidence_of(cfg, res)[0]["ddw"] == "dynamic"
    res[-1]["dt_windows"].append({"path": "/pci@8/linux,direct64-ddr-window-info", "hex": "0"})
    assert evidence_of(cfg, res) == ({"guest_iommu_domain": None, "ddw": "direct-mapped"}, "")
    # q35 has no such thing
    assert "ddw" not in evidence_of(CONFIG_BY_NAME["q35-none"], res)[0]
