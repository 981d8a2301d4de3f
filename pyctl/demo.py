"""``iommulab demo`` and ``iommulab boot``: a guest whose NVMe does DMA through the vIOMMU.

The demo is the main job of the project, scripted the way a VMM uses
/dev/iommu:

1. build (or reuse) the guest image and start q35 paused, with the
   ``iommulab-viommu`` and an NVMe disk behind it (the NVMe starts blocked);
2. the control plane opens an iommufd context on the device over QMP, maps
   all guest RAM into an IOAS at IOVA = guest physical, binds the NVMe and
   attaches it to the IOAS (a HWPT_PAGING, i.e. a stage-2 domain, is created
   for it);
3. the guest runs: its agent writes and reads back a random pattern on the
   NVMe with O_DIRECT, so every byte goes through the vIOMMU;
4. the demo prints the agent's results, the iommufd objects, the device's
   counters and fault queue, and draws the IOAS as an SVG.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from pyctl.guest.image import KERNEL_ENV, KERNELS, build_image
from pyctl.guest.results import Scenario
from pyctl.guest.runner import AgentRun
from pyctl.iommufd import IommufdContext
from pyctl.iommufd.guestmap import GuestRamMap
from pyctl.iommufd.qmp_backend import QmpBackend
from pyctl.iovamap import COLORS, Band, Row, render_svg
from pyctl.qemu.launcher import LaunchError, QemuInstance, create_raw_disk
from pyctl.qemu.machines import GuestConfig, get_machine
from pyctl.report import UserError, counter_rows, print_objects
from pyctl.tables import as_json, table

MACHINES = ("q35", "pseries", "powernv9", "powernv10")
VIOMMU_ID = "viommu0"
NVME_ID = "nvme0"


def add_boot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("machine", choices=MACHINES)
    _common(p)
    p.add_argument(
        "--viommu",
        action="store_true",
        help="put the NVMe behind iommulab-viommu, RAM identity-mapped by the control plane (q35)",
    )
    p.add_argument(
        "--kernel",
        choices=KERNELS,
        default=None,
        help=f"guest kernel: Debian's package or the lab's build with iommufd "
        f"(default: ${KERNEL_ENV}, else {KERNELS[0]})",
    )
    p.add_argument(
        "--scenarios",
        default="nvme-probe,nvme-rw",
        help="agent scenarios, comma separated (e.g. nvme-rw:size=64M)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--svg", default=None, help="where to write the IOAS picture")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB")
    p.add_argument("--rw-size", default="16M", help="bytes the guest writes and reads back")
    p.add_argument("--disk-mib", type=int, default=512)
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--workdir", type=Path, default=None, help="keep console log etc. here")
    p.add_argument(
        "--no-reboot",
        action="store_true",
        help="a reset (the guest's, or QMP system_reset) ends QEMU instead of rebooting",
    )


def say(out: TextIO, msg: str) -> None:
    print(f"==> {msg}", file=out, flush=True)


def parse_scenarios(text: str) -> list[Scenario]:
    out = []
    for item in filter(None, text.split(",")):
        name, _, argstr = item.partition(":")
        args = dict(kv.split("=", 1) for kv in argstr.split(":") if kv) if argstr else {}
        out.append(Scenario(name, args))
    return out


class Session:
    """One guest boot with the agent, optionally with the control plane attached."""

    def __init__(self, machine: str, args: argparse.Namespace, out: TextIO) -> None:
        self.machine = get_machine(machine)
        self.args = args
        self.out = out
        self.workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"iommulab-{machine}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ctx: IommufdContext | None = None
        self.backend: QmpBackend | None = None
        self.ioas: int | None = None

    def config(self, scenarios: list[Scenario], viommu: bool) -> GuestConfig:
        image = build_image(self.machine.arch, log=True, kernel=getattr(self.args, "kernel", None))
        disk = create_raw_disk(self.workdir / "nvme.img", self.args.disk_mib << 20)
        from pyctl.guest.results import cmdline_arg

        devices: list[str] = []
        if viommu:
            # Before the NVMe: a PCI device picks its DMA address space when realized.
            devices += ["-device", f"iommulab-viommu,id={VIOMMU_ID}"]
        devices += [
            "-drive",
            f"file={disk},if=none,id={NVME_ID}-drive,format=raw",
            "-device",
            f"nvme,id={NVME_ID},drive={NVME_ID}-drive,serial=iommulab-nvme0",
        ]
        if self.machine.name.startswith("powernv"):
            devices[-1] += ",bus=rp0"
        return GuestConfig(
            machine=self.machine.name,
            kernel=image.kernel,
            initrd=image.initrd,
            append=cmdline_arg(scenarios),
            memory_mib=self.args.memory,
            paused=True,
            no_reboot=self.args.no_reboot,
            extra_args=tuple(devices),
        )

    def attach_control_plane(self, inst: QemuInstance) -> None:
        # the launcher's QMP session: one monitor for the launcher and the control plane
        self.backend = QmpBackend(inst.qmp, VIOMMU_ID)
        self.ctx = IommufdContext(self.backend)
        self.ioas = self.ctx.ioas_alloc()
        ram = GuestRamMap(self.ctx, self.ioas, inst.qmp, batch=64 << 20)
        for r in ram.map_all():
            say(
                self.out,
                f"IOAS {self.ioas}: mapped {r.name} [{r.start:#x}, {r.last:#x}] at IOVA = GPA",
            )
        dev = self.ctx.bind(NVME_ID)
        hwpt = self.ctx.attach(dev, self.ioas)
        say(
            self.out,
            f"DEVICE {dev} ({NVME_ID}) attached to IOAS {self.ioas} via HWPT_PAGING {hwpt}",
        )

    def close_control_plane(self) -> None:
        if self.backend is not None:
            backend, self.backend = self.backend, None
            backend.close()  # a shared session: the launcher closes it

    def run(self, scenarios: list[Scenario], viommu: bool) -> tuple[AgentRun, dict[str, Any]]:
        from pyctl.guest.results import BOOT_PATTERN, DONE_PATTERN, parse_done, parse_results

        cfg = self.config(scenarios, viommu)
        inst = QemuInstance(cfg, self.workdir)
        error: str | None = None
        boot = done = None
        device_view: dict[str, Any] = {}
        say(self.out, f"starting {self.machine.name} (workdir {self.workdir})")
        try:
            inst.start()
            if viommu:
                self.attach_control_plane(inst)
            inst.qmp.cmd("cont")
            inst.wait_for(BOOT_PATTERN, self.args.timeout)
            boot = inst.elapsed()
            say(self.out, f"guest booted in {boot:.1f} s, running {len(scenarios)} scenario(s)")
            inst.wait_for(DONE_PATTERN, max(1.0, self.args.timeout - boot))
            done = inst.elapsed()
            if viommu:
                device_view = {
                    "counters": inst.qmp.cmd("x-iommulab-query-counters", iommu=VIOMMU_ID),
                    "faults": inst.qmp.cmd("x-iommulab-query-faults", iommu=VIOMMU_ID),
                }
            inst.wait_exit(15.0)
        except LaunchError as exc:
            error = str(exc)
        finally:
            self.close_control_plane()
            status = inst.shutdown()
        text = inst.console_text()
        run = AgentRun(
            parse_results(text), parse_done(text), inst.console_path, boot, done, error, status
        )
        return run, device_view


def print_results(run: AgentRun, out: TextIO) -> None:
    rows = [
        {
            "scenario": r.get("scenario"),
            "ok": r.get("ok"),
            "detail": " ".join(
                f"{k}={v}"
                for k, v in r.items()
                if k not in ("scenario", "ok") and not isinstance(v, (list, dict))
            )[:100],
        }
        for r in run.results
    ]
    table(rows, ["scenario", "ok", "detail"], out)
    print(f"console log: {run.console}", file=out)
    if run.error:
        print(f"error: {run.error}", file=out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    t0 = time.monotonic()
    if args.command == "boot":
        if args.viommu and args.machine != "q35":
            raise UserError("--viommu is the q35 paging vIOMMU; sPAPR stage 2 is separate")
        session = Session(args.machine, args, out)
        scen = parse_scenarios(args.scenarios)
        agent, dev = session.run(scen, args.viommu)
        if args.json:
            as_json({"results": agent.results, "error": agent.error, **dev}, out)
        else:
            print_results(agent, out)
        return 0 if agent.ok else 1

    # demo: q35 + the paging vIOMMU, scripted through the iommufd model
    session = Session("q35", args, out)
    counters: dict[str, Any] = {}
    faults: list[dict[str, Any]] = []
    scen = [Scenario("nvme-probe"), Scenario("nvme-rw", {"size": args.rw_size})]
    agent, dev = session.run(scen, viommu=True)
    print_results(agent, out)
    if session.ctx is not None and session.ioas is not None:
        ctx = session.ctx
        say(out, "iommufd objects")
        print_objects(ctx, out)
        say(out, "vIOMMU counters")
        counters = dev.get("counters", {})
        table(counter_rows(counters), ["counter", "value"], out)
        faults = dev.get("faults", {}).get("faults", [])
        say(out, f"fault queue: {len(faults)} fault(s) (devices not bound to iommufd are blocked)")
        table(faults, ["device", "requester-id", "iova", "access", "stage", "reason"], out)
        svg = Path(args.svg) if args.svg else session.workdir / "ioas.svg"
        rows = [
            Row(
                "allowed",
                [Band(a, b) for a, b in ctx.ioas_iova_ranges(session.ioas).ranges],
                COLORS["allowed"],
            ),
            Row(
                "reserved", [Band(a, b) for a, b in ctx.reserved(session.ioas)], COLORS["reserved"]
            ),
            Row(
                "mappings",
                [Band(a.iova, a.last) for a in ctx.areas(session.ioas)],
                COLORS["mappings"],
            ),
        ]
        svg.write_text(render_svg(f"q35 IOAS {session.ioas}", rows))
        say(out, f"IOAS picture: {svg}")
    nvme_faults = [f for f in faults if f.get("device", "").endswith(f"/{NVME_ID}")]
    ok = session.ctx is not None and agent.ok and not nvme_faults
    say(out, f"{'PASS' if ok else 'FAIL'} in {time.monotonic() - t0:.1f} s")
    return 0 if ok else 1
