"""The ``iommulab`` command: boot guests behind the vIOMMU and look inside a running one.

  iommulab demo                          the main job (see pyctl.demo)
  iommulab boot MACHINE [...]            boot a guest with NVMe, run agent scenarios
  iommulab --qmp SOCK devices|domains|mappings|counters|faults|translate|picture
  iommulab --qmp SOCK objects|windows|map-ram|orphans   through the iommufd model / sPAPR windows

Views print tables for people, or JSON with --json.  Every error is one
``error: ...`` line on stderr and exit status 1; nothing is changed by a
command that fails.  --timeout bounds the QMP connect (a monitor that already
has a client accepts the connection but never answers).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from pyctl.iommufd.errors import BackendError
from pyctl.iovamap import COLORS, Band, Row, render_svg
from pyctl.qemu.qmp import ExecuteError, QmpError, QmpSession, parse_address
from pyctl.report import UserError, counter_rows, object_relations, object_rows
from pyctl.tables import as_json, table

#: seconds to connect and be greeted (a monitor that already has a client never greets)
CONNECT_TIMEOUT = 10.0


class CliError(UserError):
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


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return v


def qmp_address(args: argparse.Namespace) -> str | tuple[str, int]:
    """--qmp as an address, checked: a command that talks to QEMU needs it, and a path
    must be a socket (a clear message beats the connect error)."""
    if not args.qmp:
        raise CliError("this command talks to a running QEMU: give --qmp SOCKET")
    address = parse_address(args.qmp)
    if isinstance(address, str):
        try:
            mode = os.stat(address).st_mode
        except FileNotFoundError:
            raise CliError(f"no QMP socket at {address}") from None
        except OSError as exc:
            raise CliError(f"cannot use {address}: {exc.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise CliError(f"{address} is not a socket (give QEMU's QMP socket with --qmp)")
    return address


def connect(args: argparse.Namespace) -> QmpSession:
    """A QMP session on --qmp within --timeout (QmpError says why not)."""
    return QmpSession.connect(qmp_address(args), connect_timeout=args.timeout, name="iommulab-cli")


def qmp_cmd(qmp: QmpSession, name: str, **args: Any) -> Any:
    """One command (QEMU's refusal becomes one error line in main())."""
    return qmp.cmd(name, **args)


View = Callable[[QmpSession, argparse.Namespace, TextIO], None]


def view_devices(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
    info = qmp_cmd(qmp, "x-iommulab-query", iommu=args.iommu)
    if args.json:
        as_json(info["devices"], out)
        return
    table(info["devices"], ["id", "device", "requester-id", "mode", "domain"], out)


def view_domains(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
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


def view_mappings(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
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


def view_counters(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
    counters = qmp_cmd(qmp, "x-iommulab-query-counters", iommu=args.iommu)
    if args.json:
        as_json(counters, out)
        return
    table(counter_rows(counters), ["counter", "value"], out)


def view_faults(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
    res = qmp_cmd(qmp, "x-iommulab-query-faults", iommu=args.iommu, clear=args.clear)
    if args.json:
        as_json(res, out)
        return
    table(res["faults"], ["device", "iova", "access", "stage", "reason", "domain"], out)
    if res.get("dropped"):
        print(f"({res['dropped']} more faults dropped: the queue was full)", file=out)


def view_translate(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
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


def view_picture(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
    info = qmp_cmd(qmp, "x-iommulab-query", iommu=args.iommu)
    dom = next((d for d in info["domains"] if d["domain"] == args.domain), None)
    if dom is None:
        raise CliError(f"no domain {args.domain} in {args.iommu}")
    top = (1 << dom["ias"]) - 1
    # the reserved regions are the device's own report (its IOMMU_GET_HW_INFO)
    hw = qmp_cmd(qmp, "x-iommulab-query-hw-info", device=args.iommu)
    resv = [
        Band(r["start"], r["start"] + r["size"] - 1, r["type"].upper())
        for r in hw["reserved-regions"]
    ]
    rows = [
        Row("aperture", [Band(0, top, f"{dom['ias']}-bit")], COLORS["windows"]),
        Row("reserved", resv, COLORS["reserved"]),
        Row(
            "mappings",
            [Band(m["iova"], m["iova"] + m["size"] - 1) for m in dom["mappings"]],
            COLORS["mappings"],
        ),
    ]
    svg = render_svg(f"{info['path']} domain {args.domain} ({dom['type']})", rows)
    try:
        Path(args.output).write_text(svg)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"wrote {args.output}", file=out)


# ------------------------------------------------------------ the iommufd model
@contextlib.contextmanager
def _backend(args: argparse.Namespace, spapr: bool = False) -> Iterator[Any]:
    """A QmpBackend (SpaprQmpBackend with ``spapr``) on --qmp, closed afterwards."""
    from pyctl.iommufd.qmp_backend import QmpBackend
    from pyctl.iommufd.spapr_qmp import SpaprQmpBackend

    address = qmp_address(args)
    if spapr:
        be: QmpBackend = SpaprQmpBackend(address, connect_timeout=args.timeout)
    else:
        be = QmpBackend(address, args.iommu, connect_timeout=args.timeout)
    try:
        yield be
    finally:
        be.close()


def _rebuild(be: Any, args: argparse.Namespace) -> Any:
    from pyctl.iommufd import IommufdContext, IommufdError, RebuildError

    try:
        return IommufdContext.from_hardware(
            be, shared=args.shared or (), blocked=args.blocked, nest_parents=args.nest_parent
        )
    except RebuildError as exc:
        problems = "; ".join(exc.problems)
        raise CliError(f"the device's state cannot be rebuilt exactly: {problems}") from exc
    except IommufdError as exc:
        raise CliError(str(exc)) from exc


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
    """Bind DEVICE, attach it to an IOAS, map all guest RAM at IOVA = GPA; resumable.

    The model is rebuilt from the device first, so a run that died half-way
    (kill -9) is finished, not refused: a bound device and the IOAS it is
    attached to are adopted, only the RAM not mapped yet is mapped, and a run
    with nothing left to do says so.  A failure undoes what this run did.
    """
    from pyctl.iommufd import IommufdError
    from pyctl.iommufd.guestmap import GuestRamMap
    from pyctl.iommufd.recover import attachment

    if args.batch is not None and (args.batch <= 0 or args.batch % 4096):
        raise CliError(f"--batch {args.batch} must be a positive multiple of 4096")
    with _backend(args) as be:
        ctx = _rebuild(be, args)
        try:
            name = be.device_info(args.device).device
        except BackendError as exc:  # as bind() says it (no such device file)
            raise CliError(str(IommufdError("ENOENT", f"device {args.device!r}: {exc}"))) from exc
        found = attachment(ctx, name)
        dev = found.dev_id if found else None
        ioas = found.ioas_id if found else None
        hwpt = found.hwpt_id if found else None
        bound, new_ioas = dev is None, ioas is None
        progress = ProgressLine("mapping guest RAM", sys.stderr)
        try:
            if ioas is None:
                ioas = ctx.ioas_alloc()
            if dev is None:
                dev = ctx.bind(args.device)
            if hwpt is None:
                hwpt = ctx.attach(dev, ioas)
            ram = GuestRamMap(ctx, ioas, be, batch=args.batch, progress=progress)
            added = ram.resume()  # all or nothing itself
        except (IommufdError, BackendError, ValueError) as exc:
            # a failed command changes nothing: undo this run's attach, bind, IOAS
            with contextlib.suppress(IommufdError, BackendError):
                if bound and dev is not None:
                    ctx.unbind(dev)
                elif found is not None and found.hwpt_id is None and dev is not None:
                    ctx.detach(dev)
                if new_ioas and ioas is not None:
                    ctx.destroy(ioas)
            raise CliError(str(exc)) from exc
        _note_orphans(ctx, args)
    ranges = sorted(ram.mapped.values(), key=lambda r: r.start)
    rows = [
        {
            "ioas": ioas,
            "name": r.name,
            "iova": r.start,
            "size": r.size,
            "added": sum(size for rr, _, size in added if rr == r),
        }
        for r in ranges
    ]
    resumed = not (bound and new_ioas)
    if args.json:
        doc = {"ioas": ioas, "device": dev, "hwpt": hwpt, "resumed": resumed, "ranges": rows}
        as_json(doc, out)
        return
    total = sum(size for _, _, size in added)
    if found is not None and found.hwpt_id is not None and not added:
        print(
            f"nothing to do: DEVICE {dev} ({args.device}) is attached to IOAS {ioas} via HWPT "
            f"{hwpt} and all guest RAM ({sum(r.size for r in ranges) >> 20} MiB) is mapped",
            file=out,
        )
        return
    table(rows, ["ioas", "name", "iova", "size", "added"], out)
    what = f"DEVICE {dev} ({args.device}) attached to IOAS {ioas} via HWPT {hwpt}"
    if resumed:
        kept = "the bound device" + (" and its IOAS" if not new_ioas else "")
        what += f" (resumed: adopted {kept}, mapped the missing {total >> 20} MiB)"
    print(what, file=out)


def _note_orphans(ctx: Any, args: argparse.Namespace) -> None:
    """A line on stderr when the device holds domains nothing uses (a crash's leftovers)."""
    from pyctl.iommufd.recover import orphans

    found = orphans(ctx, args.nest_parent)
    if found:
        ids = ", ".join(str(o.domain) for o in found)
        print(
            f"note: {len(found)} orphan domain(s) ({ids}): 'iommulab orphans --reclaim' frees them",
            file=sys.stderr,
        )


def cmd_orphans(args: argparse.Namespace, out: TextIO) -> None:
    """Domains nothing uses (see pyctl.iommufd.recover); --reclaim frees them."""
    from pyctl.iommufd import IommufdError
    from pyctl.iommufd.recover import orphans, reclaim

    with _backend(args) as be:
        ctx = _rebuild(be, args)
        found = orphans(ctx, args.nest_parent)
        if args.reclaim:
            try:
                for o in found:
                    reclaim(ctx, [o])
                    print(f"freed domain {o.domain} ({_orphan_text(o)})", file=out, flush=True)
            except (IommufdError, BackendError) as exc:
                raise CliError(f"freeing domain {o.domain}: {exc}") from exc
            if not found:
                print("no orphan domains", file=out)
            return
    rows = [
        {"domain": o.domain, "type": o.type, "parent": o.parent, "mappings": o.mappings,
         "mapped": o.mapped}
        for o in found
    ]  # fmt: skip
    if args.json:
        as_json(rows, out)
        return
    if not rows:
        print("no orphan domains", file=out)
        return
    table(rows, ["domain", "type", "parent", "mappings", "mapped"], out)


def _orphan_text(o: Any) -> str:
    if o.type == "nested":
        return f"nested, parent {o.parent}"
    return f"paging, {o.mappings} mapping(s), {o.mapped >> 20} MiB"


# ------------------------------------------------------------ sPAPR windows
def cmd_windows(args: argparse.Namespace, out: TextIO) -> None:
    with _backend(args, spapr=True) as be:
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
    "map-ram": (
        cmd_map_ram,
        "bind DEVICE, map all guest RAM at IOVA = GPA (resumes after a crash)",
    ),
    "orphans": (cmd_orphans, "domains nothing uses (a crash's leftovers); --reclaim frees"),
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
    p.add_argument(
        "--timeout", type=_seconds, default=CONNECT_TIMEOUT, metavar="SECONDS",
        help=f"give up connecting to QMP after this long (default {CONNECT_TIMEOUT:g})",
    )  # fmt: skip
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
        if name in ("objects", "map-ram", "orphans"):
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
        if name == "orphans":
            v.add_argument("--reclaim", action="store_true", help="free them")
        if name == "windows":
            v.add_argument("--phb", type=_int, default=0, help="PHB index (default 0)")
            v.add_argument("--device", help="the PHB of this device instead")
            v.add_argument("--entries", action="store_true", help="decode the TCEs")
    return p


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message (or its type, if it has none), newlines folded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ExecuteError):  # QEMU refused: say which command
        text = f"{exc.sent['execute']}: {text}"
    return text


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.command in COMMANDS:
        COMMANDS[args.command][0](args, out)
        return 0
    if args.command in VIEWS:
        with connect(args) as qmp:
            VIEWS[args.command][0](qmp, args, out)
        return 0
    from pyctl import demo

    return demo.run(args, out)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """The ``iommulab`` command.  Every failure is one ``error:`` line on stderr and exit
    status 1 (``IOMMULAB_DEBUG=1`` adds the traceback of an unexpected one)."""
    args = build_parser().parse_args(argv)
    try:
        return run_command(args, out)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UserError, QmpError, ExecuteError, BackendError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        # the model's and the launcher's errors (IommufdError, LaunchError,
        # ConfigError...) and bugs: still one line, the traceback on request
        if os.environ.get("IOMMULAB_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
