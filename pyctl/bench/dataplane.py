"""The data-path configurations the benchmark boots, and one boot of one of them.

A boot runs the agent's NVMe scenarios in a real guest (TCG): a warm-up
``nvme-rw`` that is dropped (its writes allocate the sparse disk file's blocks
on the host), ``nvme-rw`` with 1 MiB blocks, ``nvme-rw`` with 4 KiB blocks,
``nvme-randread`` (random 4 KiB reads) and ``dmesg-iommu``, whose lines show
that the guest's IOMMU driver really owns the NVMe (its IOMMU group) and which
invalidation policy it runs (strict or lazy).  The vIOMMU device goes on the
command line before the NVMe, so the NVMe is behind it from the start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctl.guest.image import build_image
from pyctl.guest.results import BOOT_PATTERN, DONE_PATTERN, Scenario, parse_results
from pyctl.guest.runner import guest_config
from pyctl.qemu.launcher import LaunchError, QemuInstance, create_raw_disk
from pyctl.qemu.machines import MACHINES, qemu_build_dir
from pyctl.qemu.qmp import QmpError

RAM_MIB = 1024
LAB_IOMMU = "viommu0"
SPAPR_S2 = "s2"
S1_BASE = 0x30000000  # stage-1 tables of the nested set-up (kept from the kernel by memmap=)
S1_RESERVE_MIB = 8

# what the guest's driver does per I/O, by kind of configuration
NO_MAP = "nothing: no IOMMU"
LAB_STAGE2 = "nothing: a stage-2 domain maps all RAM, set up once from the host"
LAB_NESTED = "nothing: stage 1 (identity, 4 KiB leaves) over stage 2, both set up once"
STRICT = "map + unmap; every unmap waits for its IOTLB invalidation (iommu.strict=1)"
LAZY = "map + unmap; invalidations batched and deferred (iommu.strict=0)"
TCE = (
    "nothing if the kernel direct-maps all RAM through a DDW (the raw samples say whether "
    "it did), else a TCE put + clear per I/O"
)


@dataclass(frozen=True)
class DataConfig:
    name: str
    label: str
    machine: str  # q35 | pseries
    devices: tuple[str, ...] = ()  # -device values, before the NVMe
    append: str = ""  # kernel command line
    lab: str | None = None  # stage2 | nested | spapr-s2: set up over QMP before the guest runs
    per_io: str = NO_MAP
    policy: str | None = None  # the kernel's invalidation policy the dmesg must show
    baseline: str = "q35-none"


CONFIGS: tuple[DataConfig, ...] = (
    DataConfig("q35-none", "no IOMMU", "q35"),
    DataConfig(
        "q35-lab-s2", "iommulab stage 2", "q35", (f"iommulab-viommu,id={LAB_IOMMU}",),
        lab="stage2", per_io=LAB_STAGE2,
    ),
    DataConfig(
        "q35-lab-nested", "iommulab nested", "q35", (f"iommulab-viommu,id={LAB_IOMMU}",),
        append=f"memmap={S1_RESERVE_MIB}M${S1_BASE:#x}", lab="nested", per_io=LAB_NESTED,
    ),
    DataConfig(
        "q35-intel-strict", "intel-iommu strict", "q35", ("intel-iommu",),
        append="intel_iommu=on iommu.strict=1", per_io=STRICT, policy="strict",
    ),
    DataConfig(
        "q35-intel-lazy", "intel-iommu lazy", "q35", ("intel-iommu",),
        append="intel_iommu=on iommu.strict=0", per_io=LAZY, policy="lazy",
    ),
    DataConfig(
        "q35-virtio-strict", "virtio-iommu strict", "q35", ("virtio-iommu-pci",),
        append="iommu.strict=1", per_io=STRICT, policy="strict",
    ),
    DataConfig(
        "q35-virtio-lazy", "virtio-iommu lazy", "q35", ("virtio-iommu-pci",),
        append="iommu.strict=0", per_io=LAZY, policy="lazy",
    ),
    DataConfig("pseries-stock", "pseries stock", "pseries", per_io=TCE, baseline="pseries-stock"),
    DataConfig(
        "pseries-lab-s2", "pseries + iommulab stage 2", "pseries",
        (f"iommulab-spapr-s2,id={SPAPR_S2}",), lab="spapr-s2", per_io=TCE,
        baseline="pseries-stock",
    ),
)  # fmt: skip
CONFIG_BY_NAME = {c.name: c for c in CONFIGS}


@dataclass(frozen=True)
class Plan:
    """What each boot runs: the sizes of the sequential runs and the random reads."""

    size_1m: str = "256M"  # nvme-rw with 1 MiB blocks (and the warm-up)
    size_4k: str = "16M"  # nvme-rw with 4 KiB blocks
    random_reads: int = 500
    timeout: float = 360.0

    def scenarios(self, seed: int) -> list[Scenario]:
        return [
            Scenario("nvme-rw", {"size": self.size_1m, "bs": "1M"}),  # warm-up, dropped
            Scenario("nvme-rw", {"size": self.size_1m, "bs": "1M"}),
            Scenario("nvme-rw", {"size": self.size_4k, "bs": "4K"}),
            Scenario(
                "nvme-randread",
                {"count": str(self.random_reads), "span": self.size_1m, "seed": str(seed)},
            ),
            Scenario("dmesg-iommu"),
        ]


METRICS = ("read_1m", "write_1m", "read_4k", "write_4k", "randread_iops", "randread_e2e")


@dataclass
class BootSample:
    config: str
    round: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config, "round": self.round, "metrics": self.metrics,
            "evidence": self.evidence, "error": self.error, "seconds": self.seconds,
            "load_before": self.load_before, "load_after": self.load_after,
        }  # fmt: skip


#: the guest kernel's IOMMU domain type for each invalidation policy
DOMAIN_TYPE = {"strict": "DMA", "lazy": "DMA-FQ"}


def attach_all_ram(q: Any, iommu: str, device: str, ram: int, s1_root: int | None = None) -> None:
    """Domain 1 maps all guest RAM at IOVA = GPA; with ``s1_root``, a nested domain 2 (the
    guest's stage-1 tables at ``s1_root``) over it; ``device`` is attached to the last."""
    q.cmd("x-iommulab-domain-alloc", iommu=iommu, domain=1, type="paging")
    q.cmd(
        "x-iommulab-map",
        iommu=iommu,
        domain=1,
        mappings=[{"iova": 0, "size": ram, "addr": 0, "read": True, "write": True}],
    )
    domain = 1
    if s1_root is not None:
        q.cmd(
            "x-iommulab-domain-alloc",
            iommu=iommu, domain=2, type="nested", parent=1, **{"s1-root": s1_root},
        )  # fmt: skip
        domain = 2
    q.cmd("x-iommulab-attach", iommu=iommu, device=device, mode="domain", domain=domain)


def _lab_setup(cfg: DataConfig, q: Any, ram: int) -> None:
    spapr = cfg.lab == "spapr-s2"
    attach_all_ram(
        q,
        SPAPR_S2 if spapr else LAB_IOMMU,
        SPAPR_S2 if spapr else "nvme0",
        ram,
        S1_BASE if cfg.lab == "nested" else None,
    )


def evidence_of(cfg: DataConfig, results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The NVMe's IOMMU domain type in the guest (from nvme-randread), and why the boot
    does not count ('' when it does): a peer's NVMe must have the DMA domain of the
    policy asked for (DMA: strict, DMA-FQ: lazy)."""
    rnd = next((r for r in results if r.get("scenario") == "nvme-randread"), {})
    domain = rnd.get("iommu_domain")
    ev: dict[str, Any] = {"guest_iommu_domain": domain}
    if cfg.machine == "pseries":
        # a DDW the kernel direct-maps all RAM through (no TCE work per I/O) or not
        dmesg = next((r for r in results if r.get("scenario") == "dmesg-iommu"), {})
        paths = [str(w.get("path", "")) for w in dmesg.get("dt_windows", [])]
        ev["ddw"] = (
            "direct-mapped"
            if any("direct64" in p for p in paths)
            else "dynamic"
            if paths
            else "none"
        )
    if cfg.policy is not None and domain != DOMAIN_TYPE[cfg.policy]:
        return ev, (
            f"the guest gave its NVMe a {domain} IOMMU domain, not {DOMAIN_TYPE[cfg.policy]} "
            f"({cfg.policy})"
        )
    return ev, ""


def metrics_of(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """The figures of one boot's results (the first nvme-rw is the warm-up)."""
    rws = [r for r in results if r.get("scenario") == "nvme-rw"]
    rnd = next((r for r in results if r.get("scenario") == "nvme-randread"), None)
    if len(rws) != 3 or rnd is None:
        raise ValueError(f"expected 3 nvme-rw and 1 nvme-randread results, got {results}")
    big, small = rws[1], rws[2]

    def num(v: Any) -> float | None:
        return None if v is None else float(v)

    return {
        "read_1m": num(big["read_mibs"]),
        "write_1m": num(big["write_mibs"]),
        "read_4k": num(small["read_mibs"]),
        "write_4k": num(small["write_mibs"]),
        "randread_iops": num(rnd.get("io_iops")),
        "randread_e2e": num(rnd.get("iops")),
    }


def run_boot(
    cfg: DataConfig,
    plan: Plan,
    workdir: Path,
    seed: int,
    stage1_table: Callable[[int, int], bytes],
) -> BootSample:
    """One boot of ``cfg``; a failure is the sample's ``error``, never an exception.

    ``stage1_table(size, base)`` builds the nested configuration's stage-1
    identity tables (tests/device/q35boot.py's stage1_identity).
    """
    sample = BootSample(cfg.name, seed)
    ram = RAM_MIB << 20
    workdir.mkdir(parents=True, exist_ok=True)
    disk = create_raw_disk(workdir / "nvme.raw", 512 << 20)
    devices = [a for d in cfg.devices for a in ("-device", d)]
    if cfg.lab == "nested":
        table = workdir / "stage1.bin"
        table.write_bytes(stage1_table(ram, S1_BASE))
        devices += ["-device", f"loader,file={table},addr={S1_BASE:#x},force-raw=on"]
    extra = (
        "-action", "shutdown=pause",  # QEMU stays up after the agent's power-off, to be asked
        *devices,
        "-drive", f"file={disk},if=none,id=nvme0-drive,format=raw",
        "-device", "nvme,id=nvme0,drive=nvme0-drive,serial=bench",
    )  # fmt: skip
    gc = guest_config(
        cfg.machine,
        build_image(MACHINES[cfg.machine].arch),
        plan.scenarios(seed),
        None,
        append=cfg.append,
        memory_mib=RAM_MIB,
        paused=True,
        extra_args=extra,
    )
    inst = QemuInstance(gc, workdir / "qemu", qemu_build_dir())
    try:
        inst.start()
        if cfg.lab is not None:
            _lab_setup(cfg, inst.qmp, ram)
        inst.qmp.cmd("cont")
        inst.wait_for(BOOT_PATTERN, plan.timeout)
        inst.wait_for(DONE_PATTERN, plan.timeout)
        sample.seconds = inst.elapsed()
        if cfg.lab is not None:
            iommu = SPAPR_S2 if cfg.lab == "spapr-s2" else LAB_IOMMU
            c = inst.qmp.cmd("x-iommulab-query-counters", iommu=iommu)
            sample.evidence["lab_counters"] = c
            faults = inst.qmp.cmd("x-iommulab-query-faults", iommu=iommu)["faults"]
            # other devices behind the vIOMMU but never attached fault; the NVMe must not
            sample.evidence["nvme_faults"] = len(
                [f for f in faults if str(f.get("device", "")).endswith("/nvme0")]
            )
    except (LaunchError, QmpError) as exc:
        sample.error = f"{exc} (console: {inst.console_path})"
    finally:
        inst.shutdown()
    if sample.error:
        return sample
    results = parse_results(inst.console_text())
    bad = [r for r in results if r.get("ok") is not True]
    if bad:
        sample.error = f"failed scenarios: {bad} (console: {inst.console_path})"
        return sample
    ev, why = evidence_of(cfg, results)
    sample.evidence.update(ev)
    if cfg.lab is not None:
        c = sample.evidence["lab_counters"]
        if not c.get("hits", 0) + c.get("walks", 0):
            why = f"the lab's counters show no translation: {c}"
        elif sample.evidence["nvme_faults"]:
            why = f"the NVMe's DMA faulted {sample.evidence['nvme_faults']} times"
    if why:
        sample.error = why
        return sample
    try:
        sample.metrics = metrics_of(results)
    except ValueError as exc:
        sample.error = str(exc)
    return sample
