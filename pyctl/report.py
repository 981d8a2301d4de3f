"""What the CLI and the demo share: the rows they print, and the error users can fix.

Kept apart from both so that neither imports the other for it (pyctl.cli
imports pyctl.demo for its subcommands).
"""

from __future__ import annotations

from typing import Any, TextIO

from pyctl.tables import table


class UserError(Exception):
    """A failure the user can fix (bad option, missing socket...): one ``error:`` line."""


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


def counter_rows(counters: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"counter": k, "value": str(v)} for k, v in counters.items()]


def print_objects(ctx: Any, out: TextIO) -> None:
    """The objects of an iommufd context, one line each with its relations."""
    rows = [{**r, "relations": object_relations(r)} for r in object_rows(ctx)]
    table(rows, ["id", "type", "relations"], out)
