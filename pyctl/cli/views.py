"""``iommulab --qmp SOCK VIEW``: the device's state read straight over QMP (no model)."""

from __future__ import annotations

import argparse
import base64
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pyctl.iovamap import COLORS, Band, Row, render_svg
from pyctl.qemu.qmp import QmpSession
from pyctl.report import counter_rows
from pyctl.tables import as_json, table

from .common import CliError, qmp_cmd

View = Callable[[QmpSession, argparse.Namespace, TextIO], None]


def _query(qmp: QmpSession, iommu: str, domain: int | None = None) -> dict[str, Any]:
    """``x-iommulab-query`` with every domain's (or ``domain``'s) mappings, paged (one
    answer carries at most a page: docs/qmp.md, "Paging")."""
    sel = {} if domain is None else {"domain": domain}
    info: dict[str, Any] = qmp_cmd(qmp, "x-iommulab-query", iommu=iommu, mappings=False, **sel)
    for d in info["domains"]:
        start: int | None = 0
        while start is not None:
            page = qmp_cmd(qmp, "x-iommulab-query", iommu=iommu, domain=d["domain"], start=start)
            [p] = page["domains"]
            d["mappings"] += p["mappings"]
            start = p.get("next")
    return info


def view_devices(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
    info = qmp_cmd(qmp, "x-iommulab-query", iommu=args.iommu, mappings=False)
    if args.json:
        as_json(info["devices"], out)
        return
    table(info["devices"], ["id", "device", "requester-id", "mode", "domain"], out)


def view_domains(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
    info = _query(qmp, args.iommu)
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
    info = _query(qmp, args.iommu)
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


def _write_svg(args: argparse.Namespace, svg: str, out: TextIO) -> None:
    try:
        Path(args.output).write_text(svg)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"wrote {args.output}", file=out)


def _tce_runs(qmp: QmpSession, w: dict[str, Any]) -> list[Band]:
    """The window's valid TCEs as bus-address runs (read back in bulk)."""
    bands: list[Band] = []
    page = 1 << w["page-shift"]
    start, total, run = 0, w["entries"], None
    while start < total:
        r = qmp_cmd(qmp, "x-iommulab-spapr-read-tces", liobn=w["liobn"], start=start)
        raw = base64.b64decode(r["data"])
        for i, (tce,) in enumerate(struct.iter_unpack(">Q", raw)):
            bus = w["bus-offset"] + (start + i) * page
            if tce & 3 and run is not None and run[1] + 1 == bus:
                run = (run[0], bus + page - 1)
            elif tce & 3:
                if run is not None:
                    bands.append(Band(*run))
                run = (bus, bus + page - 1)
        if not r["count"]:
            break
        start += int(r["count"])
    if run is not None:
        bands.append(Band(*run))
    return bands


def view_phb_picture(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
    """A PHB's bus address space live: host and guest windows, the TCEs in use."""
    phbs = qmp_cmd(qmp, "x-iommulab-spapr-query-phbs")
    p = next((x for x in phbs if x["phb"] == args.phb), None)
    if p is None:
        raise CliError(f"no PHB {args.phb}")

    def windows(owner: str) -> list[Band]:
        return [
            Band(w["bus-offset"], w["bus-offset"] + w["size"] - 1,
                 f"{w['liobn']:#x} {w['size'] >> 20}M/{1 << w['page-shift'] >> 10}K")
            for w in p["windows"] if w.get("owner", "host") == owner
        ]  # fmt: skip

    tces = [b for w in p["windows"] for b in _tce_runs(qmp, w)]
    rows = [
        Row("host windows", windows("host"), COLORS["windows"]),
        Row("guest windows", windows("guest"), COLORS["allowed"]),
        Row("TCEs in use", tces, COLORS["mappings"]),
    ]
    state = ", BLOCKED" if p.get("blocked") else ""
    _write_svg(args, render_svg(f"{p['path']} PHB {args.phb}{state}", rows), out)


def view_picture(qmp: QmpSession, args: argparse.Namespace, out: TextIO) -> None:
    if getattr(args, "phb", None) is not None:
        view_phb_picture(qmp, args, out)
        return
    if args.domain is None:
        raise CliError("picture: give --domain D (a domain of --iommu) or --phb N")
    info = _query(qmp, args.iommu)
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
    _write_svg(args, render_svg(f"{info['path']} domain {args.domain} ({dom['type']})", rows), out)


VIEWS: dict[str, tuple[View, str]] = {
    "devices": (view_devices, "devices behind the vIOMMU and their attachment"),
    "domains": (view_domains, "domains the device holds"),
    "mappings": (view_mappings, "stage-2 mappings, merged"),
    "counters": (view_counters, "IOTLB and fault counters"),
    "faults": (view_faults, "the fault queue"),
    "translate": (view_translate, "translate one address for a device (debug)"),
    "picture": (view_picture, "SVG picture of a domain's IOVA space, or a PHB's windows"),
}
