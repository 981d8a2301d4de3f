"""``iommulab --qmp SOCK objects|map-ram|orphans|windows``: through the iommufd model
(rebuilt from the device at every call) and the sPAPR windows."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from pyctl.iommufd.errors import BackendError
from pyctl.report import object_relations, object_rows
from pyctl.tables import as_json, table

from .common import CliError, qmp_address


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
    cols = ["phb", "index", "liobn", "owner", "bus-offset", "size", "page-shift", "entries"]
    table(rows, [*cols, "entries-in-use", "default", "faults"], out)
    if p.get("blocked"):
        print(f"PHB {phb} is BLOCKED: every DMA faults", file=out)
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
