"""The ``iommulab`` command: boot guests behind the vIOMMU and look inside a running one.

  iommulab demo                          the main job (see pyctl.demo)
  iommulab boot MACHINE [...]            boot a guest with NVMe, run agent scenarios
  iommulab --qmp SOCK devices|domains|mappings|counters|faults|translate|picture

Views print tables for people, or JSON with --json.  Errors go to stderr with
exit status 1; nothing is changed by a command that fails.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

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
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
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
