"""The ``iommulab`` command: boot guests behind the vIOMMU and look inside a running one.

  iommulab demo                          the main job (see pyctl.demo)
  iommulab boot MACHINE [...]            boot a guest with NVMe, run agent scenarios
  iommulab --qmp SOCK devices|domains|mappings|counters|faults|translate|picture
  iommulab --qmp SOCK objects|windows|map-ram      through the iommufd model / sPAPR windows

Views print tables for people, or JSON with --json.  Errors go to stderr with
exit status 1; nothing is changed by a command that fails.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from pyctl.iommufd.errors import BackendError
from pyctl.iovamap import COLORS, Band, Row, render_svg
from pyctl.tables import as_json, table

X86_MSI = (0xFEE00000, 0xFEEFFFFF)


class CliError(Exception):
    """A user-facing error: printed as 'error: ...', exit status 1."""


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _ids(text: str) -> list[int]:
    try:
        return [int(x, 0) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of domain ids: {text!r}") from None


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1].upper() in units:
            return int(text[:-1], 0) * units[text[-1].upper()]
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def connect(socket: str | None) -> QEMUMonitorProtocol:
    if not socket:
        raise CliError("this command talks to a running QEMU: give --qmp SOCKET")
    if not Path(socket).exists():
        raise CliError(f"no QMP socket at {socket}")
    qmp = QEMUMonitorProtocol(socket)
    try:
        qmp.connect(negotiate=True)
    except (OSError, QMPError) as exc:
        raise CliError(f"cannot connect to QMP at {socket}: {exc}") from exc
    return qmp


def qmp_cmd(qmp: QEMUMonitorProtocol, name: str, **args: Any) -> Any:
    """One command; a QMP error becomes a CliError carrying QEMU's message."""
    try:
        return qmp.cmd(name, **args)
    except QMPError as exc:
        raise CliError(f"{name}: {exc}") from exc


View = Callable[[QEMUMonitorProtocol, argparse.Namespace, TextIO], None]


def view_devices(qmp: QEMUMonitorProtocol, args: argparse.Namespace, out: TextIO) -> None:
    info = qmp_cmd(qmp, "x-iommulab-query", iommu=args.iommu)
    if args.json:
        as_json(info["devices"], out)
        return
    table(info["devices"], ["id", "device", "requester-id", "mode", "domain"], out)


def view_domains(qmp: QEMUMonitorProtocol, args: argparse.Namespace, out: TextIO) -> None:
    info = qmp_cmd(qmp, "x-iommulab-query", iommu=args.iommu)
    rows = [
        {**d, "mappings": len(d["mappings"]), "mapped": sum(m["size"] for m in d["mappings"])}
        for d in info["domains"]
    ]
    if args.json:
        as_json(info["domains"], out)
        return
    cols = ["domain", "type", "ias", "parent", "s1-root", "devices", "children", "mappings"]
    table(rows, [*cols, "mapped"], out)


def view_mappings(qmp: QEMUMonitorProtocol, args: argparse.Namespace, out: TextIO) -> None:
    info = qmp_cmd(qmp, "x-iommulab-query", iommu=args.iommu)
    rows = [
        {"domain": d["domain"], **m}
        for d in info["domains"]
        if args.domain is None or d["domain"] == args.domain
        for m in d["mappings"]
    ]
    if args.json:
        as_json(rows, out)
        return
    table(rows, ["domain", "iova", "size", "addr", "read", "write"], out)


def view_counters(qmp: QEMUMonitorProtocol, args: argparse.Namespace, out: TextIO) -> None:
    counters = qmp_cmd(qmp, "x-iommulab-query-counters", iommu=args.iommu)
    if args.json:
        as_json(counters, out)
        return
    table([{"counter": k, "value": str(v)} for k, v in counters.items()], ["counter", "value"], out)


def view_faults(qmp: QEMUMonitorProtocol, args: argparse.Namespace, out: TextIO) -> None:
    res = qmp_cmd(qmp, "x-iommulab-query-faults", iommu=args.iommu, clear=args.clear)
    if args.json:
        as_json(res, out)
        return
    table(res["faults"], ["device", "iova", "access", "stage", "reason", "domain"], out)
    if res.get("dropped"):
        print(f"({res['dropped']} more faults dropped: the queue was full)", file=out)


def view_translate(qmp: QEMUMonitorProtocol, args: argparse.Namespace, out: TextIO) -> None:
    res = qmp_cmd(
        qmp,
        "x-iommulab-translate",
        iommu=args.iommu,
        device=args.device,
        iova=args.iova,
        access="write" if args.write else "read",
    )
    if args.json:
        as_json(res, out)
        return
    table(
        [{"iova": args.iova, **res}],
        ["iova", "allowed", "addr", "read", "write", "stage", "reason"],
        out,
    )


def view_picture(qmp: QEMUMonitorProtocol, args: argparse.Namespace, out: TextIO) -> None:
    info = qmp_cmd(qmp, "x-iommulab-query", iommu=args.iommu)
    dom = next((d for d in info["domains"] if d["domain"] == args.domain), None)
    if dom is None:
        raise CliError(f"no domain {args.domain} in {args.iommu}")
    top = (1 << dom["ias"]) - 1
    rows = [
        Row("aperture", [Band(0, top, f"{dom['ias']}-bit")], COLORS["windows"]),
        Row("reserved", [Band(*X86_MSI, "MSI")], COLORS["reserved"]),
        Row(
            "mappings",
            [Band(m["iova"], m["iova"] + m["size"] - 1) for m in dom["mappings"]],
            COLORS["mappings"],
        ),
    ]
    svg = render_svg(f"{info['path']} domain {args.domain} ({dom['type']})", rows)
    Path(args.output).write_text(svg)
    print(f"wrote {args.output}", file=out)


# ------------------------------------------------------------ the iommufd model
def _hw_error(exc: Exception) -> CliError:
    return CliError(str(exc))


def _backend(args: argparse.Namespace) -> Any:
    """A QmpBackend on --qmp (checked like connect())."""
    from pyctl.iommufd.qmp_backend import QmpBackend

    if not args.qmp:
        raise CliError("this command talks to a running QEMU: give --qmp SOCKET")
    if not Path(args.qmp).exists():
        raise CliError(f"no QMP socket at {args.qmp}")
    try:
        return QmpBackend(args.qmp, args.iommu)
    except (OSError, QMPError) as exc:
        raise CliError(f"cannot connect to QMP at {args.qmp}: {exc}") from exc


def _rebuild(be: Any, args: argparse.Namespace) -> Any:
    from pyctl.iommufd import IommufdContext, IommufdError, RebuildError

    try:
        return IommufdContext.from_hardware(
            be, shared=args.shared or (), blocked=args.blocked, nest_parents=args.nest_parent
        )
    except RebuildError as exc:
        lines = "\n  ".join(exc.problems)
        raise CliError(f"the device's state cannot be rebuilt exactly:\n  {lines}") from exc
    except IommufdError as exc:
        raise _hw_error(exc) from exc


def object_rows(ctx: Any) -> list[dict[str, Any]]:
    """One row per iommufd object with its relations (ids of the other objects)."""
    from pyctl.iommufd.objects import Device, HwptNested, HwptPaging, Ioas

    rows: list[dict[str, Any]] = []
    for oid, o in sorted(ctx.objects().items()):
        if isinstance(o, Ioas):
            rows.append({
                "id": oid, "type": "IOAS", "hwpts": sorted(o.hwpts),
                "areas": len(o.areas), "mapped": sum(a.length for a in o.areas),
                "iova-ranges": [[s, e] for s, e in o.iova_ranges()],
            })  # fmt: skip
        elif isinstance(o, HwptPaging):
            rows.append({
                "id": oid, "type": "HWPT_PAGING", "ioas": o.ioas_id,
                "flags": "NEST_PARENT" if o.nest_parent else ("auto" if o.auto else ""),
                "devices": sorted(o.devices), "children": sorted(o.children),
            })  # fmt: skip
        elif isinstance(o, HwptNested):
            rows.append({
                "id": oid, "type": "HWPT_NESTED", "parent": o.parent_id,
                "s1-root": o.s1_root, "devices": sorted(o.devices),
            })  # fmt: skip
        elif isinstance(o, Device):
            rows.append({"id": oid, "type": "DEVICE", "device": o.name, "hwpt": o.hwpt_id})
    return rows


def object_relations(row: dict[str, Any]) -> str:
    def ids(v: list[int]) -> str:
        return ",".join(str(i) for i in v) or "-"

    t = row["type"]
    if t == "IOAS":
        return f"hwpts={ids(row['hwpts'])} areas={row['areas']} mapped={row['mapped']:#x}"
    if t == "HWPT_PAGING":
        extra = f" {row['flags']}" if row["flags"] else ""
        return (
            f"ioas={row['ioas']} devices={ids(row['devices'])} nested={ids(row['children'])}{extra}"
        )
    if t == "HWPT_NESTED":
        return f"parent={row['parent']} s1-root={row['s1-root']:#x} devices={ids(row['devices'])}"
    hwpt = row["hwpt"] if row["hwpt"] is not None else "- (blocked)"
    return f"{row['device']} hwpt={hwpt}"


def cmd_objects(args: argparse.Namespace, out: TextIO) -> None:
    with _backend(args) as be:
        ctx = _rebuild(be, args)
        rows = object_rows(ctx)
    if args.json:
        as_json(rows, out)
        return
    table([{**r, "relations": object_relations(r)} for r in rows], ["id", "type", "relations"], out)


class ProgressLine:
    """Progress of a long operation on a stream: a line per whole percent (\r on a tty)."""

    def __init__(self, what: str, stream: TextIO) -> None:
        self.what = what
        self.stream = stream
        self.last = -1
        self.tty = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        if pct == self.last:
            return
        self.last = pct
        text = f"{self.what}: {done >> 20}/{total >> 20} MiB ({pct}%)"
        end = "" if self.tty and pct < 100 else "\n"
        print(("\r" if self.tty else "") + text, end=end, file=self.stream, flush=True)


def cmd_map_ram(args: argparse.Namespace, out: TextIO) -> None:
    from pyctl.iommufd import U64_MAX, IommufdError
    from pyctl.iommufd.guestmap import GuestRamMap

    with _backend(args) as be:
        ctx = _rebuild(be, args)
        ioas = ctx.ioas_alloc()
        dev: int | None = None
        try:
            dev = ctx.bind(args.device)
            hwpt = ctx.attach(dev, ioas)
            progress = ProgressLine("mapping guest RAM", sys.stderr)
            ram = GuestRamMap(ctx, ioas, be, batch=args.batch, progress=progress)
            ranges = ram.map_all()
        except (IommufdError, BackendError, ValueError) as exc:
            # a failed command changes nothing: undo the maps, the attach and the bind
            with contextlib.suppress(IommufdError, BackendError):
                ctx.ioas_unmap(ioas, 0, U64_MAX)
                if dev is not None:
                    ctx.unbind(dev)
                ctx.destroy(ioas)
            raise CliError(str(exc)) from exc
    rows = [{"ioas": ioas, "name": r.name, "iova": r.start, "size": r.size} for r in ranges]
    if args.json:
        as_json({"ioas": ioas, "device": dev, "hwpt": hwpt, "ranges": rows}, out)
        return
    table(rows, ["ioas", "name", "iova", "size"], out)
    print(f"DEVICE {dev} ({args.device}) attached to IOAS {ioas} via HWPT {hwpt}", file=out)


# ------------------------------------------------------------ sPAPR windows
def cmd_windows(args: argparse.Namespace, out: TextIO) -> None:
    from pyctl.iommufd.spapr_qmp import SpaprQmpBackend

    if not args.qmp:
        raise CliError("this command talks to a running QEMU: give --qmp SOCKET")
    if not Path(args.qmp).exists():
        raise CliError(f"no QMP socket at {args.qmp}")
    try:
        be = SpaprQmpBackend(args.qmp)
    except (OSError, QMPError) as exc:
        raise CliError(f"cannot connect to QMP at {args.qmp}: {exc}") from exc
    with be:
        try:
            phb = be.phb_of(args.device) if args.device else args.phb
            p = next((x for x in be.phbs() if x["phb"] == phb), None)
            if p is None:
                raise CliError(f"no PHB {phb}")
            rows = [{"phb": phb, "index": p["liobns"].index(w["liobn"]), **w} for w in p["windows"]]
            entries = []
            if args.entries:
                for r in rows:
                    entries += [
                        {"phb": phb, "window": r["index"], "liobn": r["liobn"], "tce": e.index,
                         "bus": e.bus, "addr": e.addr, "read": e.read, "write": e.write}
                        for e in be.read_phb_tces(phb, r["index"])
                    ]  # fmt: skip
        except BackendError as exc:
            raise CliError(str(exc)) from exc
    if args.json:
        as_json({"windows": rows, **({"entries": entries} if args.entries else {})}, out)
        return
    cols = ["phb", "index", "liobn", "bus-offset", "size", "page-shift", "entries"]
    table(rows, [*cols, "entries-in-use", "default", "faults"], out)
    if args.entries:
        print(file=out)
        table(entries, ["window", "tce", "bus", "addr", "read", "write"], out)


Command = Callable[[argparse.Namespace, TextIO], None]

COMMANDS: dict[str, tuple[Command, str]] = {
    "objects": (cmd_objects, "the iommufd objects rebuilt from the device, with relations"),
    "windows": (cmd_windows, "a pseries PHB's DMA windows (--entries: decoded TCEs)"),
    "map-ram": (cmd_map_ram, "bind DEVICE, map all guest RAM at IOVA = GPA (with progress)"),
}


VIEWS: dict[str, tuple[View, str]] = {
    "devices": (view_devices, "devices behind the vIOMMU and their attachment"),
    "domains": (view_domains, "domains the device holds"),
    "mappings": (view_mappings, "stage-2 mappings, merged"),
    "counters": (view_counters, "IOTLB and fault counters"),
    "faults": (view_faults, "the fault queue"),
    "translate": (view_translate, "translate one address for a device (debug)"),
    "picture": (view_picture, "SVG picture of a domain's IOVA space"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iommulab", description=__doc__.split("\n\n")[0])
    p.add_argument("--qmp", metavar="SOCKET", help="QMP socket of a running QEMU")
    p.add_argument("--iommu", default="viommu0", help="vIOMMU qdev id or QOM path")
    p.add_argument("--json", action="store_true", help="JSON output for scripts")
    sub = p.add_subparsers(dest="command", required=True)

    from pyctl import demo  # local: keeps `iommulab --help` light

    demo.add_arguments(sub.add_parser("demo", help="the main job: NVMe behind the vIOMMU"))
    demo.add_boot_arguments(sub.add_parser("boot", help="boot a guest and run agent scenarios"))
    for name, (_, help_text) in VIEWS.items():
        v = sub.add_parser(name, help=help_text)
        if name == "mappings":
            v.add_argument("--domain", type=_int)
        if name == "faults":
            v.add_argument("--clear", action="store_true", help="empty the queue after reading")
        if name == "translate":
            v.add_argument("device")
            v.add_argument("iova", type=_int)
            v.add_argument("--write", action="store_true")
        if name == "picture":
            v.add_argument("--domain", type=_int, required=True)
            v.add_argument("-o", "--output", default="iova.svg")
    for name, (_, help_text) in COMMANDS.items():
        v = sub.add_parser(name, help=help_text)
        if name in ("objects", "map-ram"):
            v.add_argument(
                "--shared", type=_ids, action="append", metavar="D,D",
                help="paging domains that share one IOAS (repeatable)",
            )  # fmt: skip
            v.add_argument(
                "--blocked", action="append", default=[], metavar="DEVICE",
                help="also bind this detached device (repeatable)",
            )  # fmt: skip
            v.add_argument(
                "--nest-parent", action="append", default=[], type=_int, metavar="D",
                help="this paging domain was allocated NEST_PARENT (repeatable)",
            )  # fmt: skip
        if name == "map-ram":
            v.add_argument("device", help="device to bind (qdev id or QOM path)")
            v.add_argument("--batch", type=_size, help="bytes per IOAS_MAP, e.g. 64M")
        if name == "windows":
            v.add_argument("--phb", type=_int, default=0, help="PHB index (default 0)")
            v.add_argument("--device", help="the PHB of this device instead")
            v.add_argument("--entries", action="store_true", help="decode the TCEs")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in COMMANDS:
            COMMANDS[args.command][0](args, out)
            return 0
        if args.command in VIEWS:
            qmp = connect(args.qmp)
            try:
                VIEWS[args.command][0](qmp, args, out)
            finally:
                qmp.close()
            return 0
        from pyctl import demo

        return demo.run(args, out)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
