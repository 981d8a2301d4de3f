"""docs/performance.md and its charts from one run's results (the JSON bench-lab.py writes).

Pure: a dict in, markdown and SVG text out, so the page is tested without
booting anything.  Every ratio on the page is of two figures of the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyctl.bench.dataplane import CONFIGS, METRICS, DataConfig
from pyctl.bench.stats import Summary, ratio
from pyctl.bench.svg import bar_chart, fmt

METRIC_LABEL = {
    "read_1m": "read, 1 MiB blocks (MiB/s)",
    "write_1m": "write, 1 MiB blocks (MiB/s)",
    "read_4k": "read, 4 KiB blocks (MiB/s)",
    "write_4k": "write, 4 KiB blocks (MiB/s)",
    "randread_iops": "random 4 KiB reads (IOPS, process cost subtracted)",
    "randread_e2e": "random 4 KiB reads (IOPS, one dd per read, end to end)",
}
SHORT = {
    "read_1m": "read 1M", "write_1m": "write 1M", "read_4k": "read 4K",
    "write_4k": "write 4K", "randread_iops": "rand read 4K", "randread_e2e": "rand 4K e2e",
}  # fmt: skip
DMA_LABEL = {
    "q35-none": "q35, no IOMMU",
    "q35-lab-s2": "q35, iommulab stage 2",
    "q35-lab-nested": "q35, iommulab nested (4 KiB stage 1 over stage 2)",
    "q35-intel-iommu": "q35, intel-iommu (4-level second-level table)",
    "pseries-stock": "pseries, TCE",
    "pseries-lab-s2": "pseries, TCE + iommulab stage 2",
}
MIB_1M = ("read_1m", "write_1m")
MIB_4K = ("read_4k", "write_4k")
PEERS = ("q35-intel-strict", "q35-intel-lazy", "q35-virtio-strict", "q35-virtio-lazy")
LAB = ("q35-lab-s2", "q35-lab-nested")


def summaries(samples: Sequence[dict[str, Any]]) -> dict[str, dict[str, Summary | None]]:
    """config -> metric -> the summary of that config's successful boots."""
    out: dict[str, dict[str, Summary | None]] = {}
    for cfg in CONFIGS:
        ok = [s for s in samples if s["config"] == cfg.name and not s.get("error")]
        if not ok:
            continue
        out[cfg.name] = {m: Summary.of(s["metrics"].get(m) for s in ok) for m in METRICS}
    return out


def cell(s: Summary | None, unit: str = "") -> str:
    if s is None:
        return "—"
    rng = f"{fmt(s.lo)}-{fmt(s.hi)}"
    return f"**{fmt(s.median)}**{unit} <sub>{rng}</sub>"


def _configs(machine: str, present: dict[str, Any]) -> list[DataConfig]:
    return [c for c in CONFIGS if c.machine == machine and c.name in present]


def data_table(sums: dict[str, dict[str, Summary | None]], machine: str) -> list[str]:
    cfgs = _configs(machine, sums)
    if not cfgs:
        return []
    metrics = [m for m in METRICS if any(sums[c.name][m] for c in cfgs)]
    lines = [
        "| configuration | " + " | ".join(SHORT[m] for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for c in cfgs:
        lines.append(f"| {c.label} | " + " | ".join(cell(sums[c.name][m]) for m in metrics) + " |")
    lines.append("")
    base = cfgs[0]
    lines += [
        f"Ratio to **{base.label}** (higher is faster; range: worst to best pairing of the "
        "samples):",
        "",
        "| configuration | " + " | ".join(SHORT[m] for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for c in cfgs[1:]:
        cells = [cell(ratio(sums[c.name][m], sums[base.name][m]), "x") for m in metrics]
        lines.append(f"| {c.label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def lab_vs_peers(sums: dict[str, dict[str, Summary | None]]) -> list[str]:
    labs = [c for c in LAB if c in sums]
    peers = [c for c in PEERS if c in sums]
    if not labs or not peers:
        return []
    by = {c.name: c for c in CONFIGS}
    metrics = [m for m in METRICS if m != "randread_e2e"]
    lines = [
        "| iommulab / peer | " + " | ".join(SHORT[m] for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for lab in labs:
        for peer in peers:
            cells = [cell(ratio(sums[lab][m], sums[peer][m]), "x") for m in metrics]
            lines.append(f"| {by[lab].label} / {by[peer].label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def charts(sums: dict[str, dict[str, Summary | None]], rounds: int) -> dict[str, str]:
    """file name -> SVG."""
    out: dict[str, str] = {}
    sub = f"bar: median of {rounds} interleaved rounds; whisker: min-max"
    q35 = _configs("q35", sums)
    if q35 and q35[0].name == "q35-none":
        groups = []
        for m in METRICS:
            if m == "randread_e2e":
                continue
            bars = [(c.label, ratio(sums[c.name][m], sums["q35-none"][m])) for c in q35[1:]]
            groups.append((METRIC_LABEL[m].split(" (")[0], bars))
        out["perf-q35-ratio.svg"] = bar_chart(
            "q35 NVMe O_DIRECT: speed relative to no IOMMU (1.0 = as fast)", "x", groups,
            reference=1.0, subtitle=sub,
        )  # fmt: skip
    for machine, name, title, metrics in (
        ("q35", "perf-q35-mibs.svg", "q35 NVMe O_DIRECT, 1 MiB blocks (MiB/s)", MIB_1M),
        ("q35", "perf-q35-4k.svg", "q35 NVMe O_DIRECT, 4 KiB blocks (MiB/s)", MIB_4K),
        ("pseries", "perf-pseries-mibs.svg", "pseries NVMe O_DIRECT, 1 MiB blocks (MiB/s)", MIB_1M),
    ):
        cfgs = _configs(machine, sums)
        if not cfgs:
            continue
        groups = [
            (METRIC_LABEL[m].split(" (")[0], [(c.label, sums[c.name][m]) for c in cfgs])
            for m in metrics
        ]
        out[name] = bar_chart(title, "MiB/s", groups, subtitle=sub)
    if "pseries-stock" in sums and "pseries-lab-s2" in sums:
        bars = [
            (SHORT[m], ratio(sums["pseries-lab-s2"][m], sums["pseries-stock"][m]))
            for m in METRICS
            if m != "randread_e2e"
        ]
        out["perf-pseries-ratio.svg"] = bar_chart(
            "pseries: iommulab stage 2 under the TCEs, relative to stock (1.0 = as fast)",
            "x",
            [("pseries + iommulab stage 2 / pseries stock", bars)],
            reference=1.0,
            subtitle=sub,
        )
    return out


def _load_line(data: dict[str, Any]) -> str:
    loads = [x for s in data.get("samples", []) for x in (s["load_before"][0], s["load_after"][0])]
    ls = Summary.of(loads)
    if ls is None:
        return ""
    return (
        f"Machine load (1-minute average from /proc/loadavg, before and after each boot): "
        f"median {ls.median:.1f}, min {ls.lo:.1f}, max {ls.hi:.1f} on {data['host']['cpus']} "
        f"CPUs.  Each boot's load is in the raw samples below."
    )


def headline(sums: dict[str, dict[str, Summary | None]], dma: dict[str, Any]) -> list[str]:
    """The few numbers a reader wants first, each a ratio of this run."""
    by = {c.name: c.label for c in CONFIGS}
    out: list[str] = []

    def r(a: str, b: str, m: str) -> str | None:
        x = ratio(sums.get(a, {}).get(m), sums.get(b, {}).get(m))
        return None if x is None else f"**{x.median:.2f}x** ({fmt(x.lo)}-{fmt(x.hi)})"

    for m in ("read_1m", "read_4k"):
        what = METRIC_LABEL[m].split(" (")[0]
        parts = [
            f"{by[a]} {v} of {by[b]}"
            for a, b in (
                ("q35-lab-s2", "q35-none"),
                ("q35-lab-nested", "q35-none"),
                ("q35-intel-strict", "q35-none"),
                ("q35-virtio-strict", "q35-none"),
                ("pseries-lab-s2", "pseries-stock"),
            )
            if (v := r(a, b, m))
        ]
        if parts:
            out.append(f"- NVMe {what}: " + "; ".join(parts) + ".")
    base = dma.get("q35-none")
    if isinstance(base, int) and base:
        parts = [
            f"{DMA_LABEL[k].split(', ', 1)[1]} **{v / base:.2f}x**"
            for k, v in dma.items()
            if k.startswith("q35-") and k != "q35-none" and isinstance(v, int)
        ]
        if parts:
            out.append(
                f"- QEMU's instructions for one 4 KiB DMA, relative to no IOMMU ({base:,}): "
                + "; ".join(parts)
                + " (callgrind, the same on any load)."
            )
    return [*out, ""] if out else []


def render(data: dict[str, Any], img_dir: str = "img") -> tuple[str, dict[str, str]]:
    """The page and its charts (file name -> SVG; the page links them under ``img_dir``)."""
    samples = data.get("samples", [])
    sums = summaries(samples)
    planned = int(data.get("rounds", 0))
    rounds = len({s["round"] for s in samples})
    svgs = charts(sums, rounds)
    plan = data.get("plan", {})
    md: list[str] = ["# Performance", ""]
    if data.get("quick"):
        md += [
            "> **Quick run** (`--quick`: few rounds, small sizes, meant for developing the "
            "benchmark).  The figures are indicative only; regenerate with the full command "
            "below before quoting them.",
            "",
        ]
    md += [
        f"Generated by `{data.get('command', 'scripts/bench-lab.py')}` on {data.get('started')} "
        f"(finished {data.get('finished')}), QEMU {data['host'].get('qemu', '?')}, TCG, "
        f"host {data['host'].get('uname', '?')}.  All figures come from this one run; "
        "configurations were interleaved round by round (each round starts one configuration "
        "later), every boot drops a warm-up pass, and each figure is the median with its "
        "min-max range.",
        "",
        _load_line(data),
        "",
        *(
            [
                f"**Cut short:** {rounds} of the {planned} planned data-path rounds ran "
                "(the last one possibly in part); the figures are medians of what ran.",
                "",
            ]
            if rounds < planned and samples
            else []
        ),
        *headline(sums, data.get("dma") or {}),
        "Regenerate: `.venv/bin/python scripts/bench-lab.py` (full: 3 rounds of 9 boots plus "
        "the instruction counts and the control path, 12-30 minutes on a 2-CPU machine "
        "depending on its load) or `--quick` (about 8 minutes); "
        "`--from-json results/bench-lab.json` redraws the page "
        "from a run's saved results.  Wall-clock figures under TCG move with the host's "
        "load (see the ranges); the instruction counts do not.",
        "",
        "## What is compared with what",
        "",
        "Every configuration boots the same guest kernel and agent on the same QEMU binary, "
        "with one NVMe controller whose disk is a raw file.  They differ in what the guest's "
        "kernel does for each I/O, and that decides which comparisons are like for like:",
        "",
        "| configuration | guest's work per I/O |",
        "|---|---|",
    ]
    md += [f"| {c.label} | {c.per_io} |" for c in CONFIGS]
    md += [
        "",
        "- **iommulab stage 2 / nested vs no IOMMU** is like for like: neither guest maps "
        "anything per I/O; the difference is the device model's translation (IOTLB hits, "
        "walks) on every DMA.",
        "- **iommulab vs intel-iommu / virtio-iommu is not like for like.** The lab's guest "
        "does no map/unmap: its NVMe is attached to a stage-2 domain the host set up once, "
        "mapping all RAM (the set-up a VMM gives an assigned device).  The peers' guests "
        "run the Linux DMA API through their IOMMU driver, so each I/O maps and unmaps its "
        "buffer: in strict mode every unmap waits for an IOTLB invalidation (a register "
        "write for intel-iommu, a virtqueue request for virtio-iommu), in lazy mode the "
        "invalidations are batched and deferred.  Those ratios measure *the cost a guest "
        "pays for a translated DMA-API IOMMU*, which iommulab's set-up avoids by design; "
        "they are not a statement that the lab translates faster.",
        "- **strict vs lazy** of one peer is like for like: same driver, only the "
        "invalidation policy differs (the guest's NVMe IOMMU domain type is checked: "
        "DMA for strict, DMA-FQ for lazy; a boot with another type does not count).",
        "- **pseries stock vs stage 2** is like for like: the same guest with the same TCE "
        "windows; with stage 2 every TCE-translated address is translated once more by an "
        "iommulab domain mapping all RAM.",
        "",
        f"Each boot: `nvme-rw` of {plan.get('size_1m')} with 1 MiB blocks (a warm-up pass, "
        f"dropped, then the measured one), `nvme-rw` of {plan.get('size_4k')} with 4 KiB "
        f"blocks, `nvme-randread` of {plan.get('random_reads')} 4 KiB reads at random "
        f"offsets in the first {plan.get('size_1m')}, all O_DIRECT (guest/agent/init).  "
        "Random reads start one `dd` per read (busybox has no random-I/O tool); each read "
        "follows a `dd` reading nothing at the same offset, whose time is subtracted "
        "(`rand read 4K`); the end-to-end rate with the process cost is `rand 4K e2e`.  "
        "A new `dd` also means a new buffer page per read, so every random read is a "
        "fresh translation for the IOMMU.  Under TCG a process start costs tens of "
        "milliseconds against well under one for the read itself, so on a loaded host "
        "`rand read 4K` is the noisiest figure here (a boot whose median difference is not "
        "positive has none): read its range before its median.",
        "",
    ]
    if "perf-q35-ratio.svg" in svgs:
        md += ["## q35", "", f"![q35 ratios]({img_dir}/perf-q35-ratio.svg)", ""]
    elif sums:
        md += ["## q35", ""]
    md += data_table(sums, "q35")
    for name in ("perf-q35-mibs.svg", "perf-q35-4k.svg"):
        if name in svgs:
            md += [f"![q35 throughput]({img_dir}/{name})", ""]
    peers = lab_vs_peers(sums)
    if peers:
        md += [
            "### iommulab against QEMU's vIOMMUs (not like for like, see above)",
            "",
            *peers,
        ]
    if _configs("pseries", sums):
        md += ["## pseries", ""]
        for name in ("perf-pseries-ratio.svg", "perf-pseries-mibs.svg"):
            if name in svgs:
                md += [f"![pseries]({img_dir}/{name})", ""]
        md += data_table(sums, "pseries")
    md += _failures(samples)
    md += _instructions(data)
    md += _control(data)
    md += _raw(samples)
    return "\n".join(md).rstrip() + "\n", svgs


def _failures(samples: Sequence[dict[str, Any]]) -> list[str]:
    bad = [s for s in samples if s.get("error")]
    if not bad:
        return []
    out = ["### Boots that did not count", ""]
    out += [f"- {s['config']} round {s['round']}: {s['error']}" for s in bad]
    return [*out, ""]


def _instructions(data: dict[str, Any]) -> list[str]:
    core = data.get("core") or {}
    dma = data.get("dma") or {}
    if not core and not dma:
        return []
    out = [
        "## Instruction counts (callgrind: repeatable, unaffected by load)",
        "",
    ]
    if core.get("callgrind"):
        out += [
            "The translation core alone (scripts/bench-core.sh, tests/core/bench-core.c):",
            "",
            "| operation | instructions |",
            "|---|---:|",
        ]
        out += [f"| {k} | {v:,} |" for k, v in core["callgrind"].items()]
        out.append("")
    if core.get("error"):
        out += [f"bench-core.sh failed: {core['error']}", ""]
    if dma:
        out += [
            "One 4 KiB DMA by QEMU's `edu` device (qtest, no guest; inclusive count of "
            "`edu_dma_timer`: translation and copy; the mean of a first DMA that walks the "
            "tables and DMAs of the same page that hit the IOTLB; pyctl/bench/dma.py, "
            "pseries through scripts/bench-spapr.py).  This is the like-for-like "
            "comparison of the device models' translation: no guest driver work is in it.  "
            "virtio-iommu is not measured here (its mappings arrive through a virtqueue, "
            "which qtest does not drive):",
            "",
            "| configuration | instructions per DMA | vs without IOMMU |",
            "|---|---:|---:|",
        ]
        for machine, base in (("q35", "q35-none"), ("pseries", "pseries-stock")):
            for name, v in dma.items():
                if not name.startswith(machine):
                    continue
                label = DMA_LABEL.get(name, name)
                if isinstance(v, int):
                    b = dma.get(base)
                    r = f"{v / b:.2f}x" if isinstance(b, int) and b else "—"
                    out.append(f"| {label} | {v:,} | {r} |")
                else:
                    out.append(f"| {label} | not measured: {v} | |")
        out.append("")
    return out


def _one_line(text: str) -> str:
    """Text for a table cell: one line, no column separator."""
    return " ".join(text.split()).replace("|", "\\|")


def _control(data: dict[str, Any]) -> list[str]:
    runs = data.get("control") or []
    if not runs:
        return []
    out = [
        "## Control path",
        "",
        "The control-path benchmarks of issue 12, run as they are (their own scripts), "
        "in this run; the figures are their lines:",
        "",
        "| script | figure |",
        "|---|---|",
    ]
    for r in runs:
        if r.get("error"):
            out.append(f"| `{r['script']}` | not run: {_one_line(r['error'])} |")
            continue
        for line in r.get("figures", []):
            out.append(f"| `{r['script']}` | {_one_line(line)} |")
    out += ["", "<details><summary>their full output</summary>", ""]
    for r in runs:
        if r.get("output"):
            out += [f"`{r['script']} {' '.join(r['args'])}`:", "", "```", r["output"].rstrip()]
            out += ["```", ""]
    out += ["</details>", ""]
    return out


def _raw(samples: Sequence[dict[str, Any]]) -> list[str]:
    if not samples:
        return []
    out = [
        "## Raw samples",
        "",
        "<details><summary>every boot, in the order they ran</summary>",
        "",
        "| config | round | load before | load after | s | "
        + " | ".join(SHORT[m] for m in METRICS)
        + " | guest IOMMU domain (pseries: DDW) | lab IOTLB hits / walks |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(METRICS) + "---|---:|",
    ]
    for s in samples:
        vals = [
            "—" if s["metrics"].get(m) is None else fmt(float(s["metrics"][m])) for m in METRICS
        ]
        ev = s.get("evidence", {})
        c = ev.get("lab_counters") or {}
        lab = f"{c.get('hits', 0):,} / {c.get('walks', 0):,}" if c else "—"
        out.append(
            f"| {s['config']} | {s['round']} | {s['load_before'][0]:.2f} | "
            f"{s['load_after'][0]:.2f} | {s['seconds']:.0f} | "
            + " | ".join(vals)
            + f" | {ev.get('guest_iommu_domain') or '—'}"
            + (f", DDW {ev['ddw']}" if ev.get("ddw") else "")
            + f" | {lab} |"
        )
    return [*out, "", "</details>", ""]
