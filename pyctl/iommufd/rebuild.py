"""Rebuild an iommufd context from what the hardware holds (a control plane reconnecting).

The device's query (``x-iommulab-query``) reports domains, their merged
mappings and the devices' attachments; it does not know IOAS objects, device
ids or which domains once shared an IOAS.  The rebuild is therefore exact
about what the hardware says and asks the caller for the rest:

* every domain id becomes the HWPT object with the same id (the device keeps
  using it); IOAS and DEVICE objects get the lowest ids the domains leave free;
* a paging domain with nested children, or named in ``nest_parents``, is a
  NEST_PARENT HWPT (the device does not keep the flag, so a NEST_PARENT without
  children must be named); one with devices and no children an automatic HWPT
  (as attach-to-IOAS makes); one with neither an explicit HWPT_ALLOC'd one;
* each paging domain gets an IOAS of its own, unless ``shared`` names groups
  of domain ids that share one IOAS; their mappings must then be identical;
* each area is one merged run of the hardware (the original MAP boundaries are
  not recorded by the device, so the rebuilt IOAS holds the runs);
* devices attached to a domain are bound (DEVICE objects); a blocked device
  looks the same as one nobody bound (``default-mode`` blocked), so only the
  devices named in ``blocked`` are bound blocked; devices in bypass, which the
  model never sets, stay unbound.

Whatever cannot be reproduced exactly (a nested domain whose parent is missing
or not a paging domain, different mappings in one shared group, a mapping
inside a device's reserved region or beyond a domain's aperture, ...) is
collected and raised as one :class:`RebuildError` listing every problem;
nothing is guessed and the hardware is not touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .areas import Area
from .backend import DeviceHwInfo, HardwareBackend, HwDomain
from .errors import BackendError, IommufdError
from .objects import Device, HwptNested, HwptPaging, Ioas, Reserved

if TYPE_CHECKING:
    from .context import IommufdContext


class RebuildError(IommufdError):
    """The hardware holds a state the model cannot reproduce; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "EINVAL",
            f"cannot rebuild from the hardware ({len(problems)} problem(s)): "
            + "; ".join(problems),
            problems=list(problems),
        )
        self.problems = list(problems)


def _groups(
    paging: dict[int, HwDomain], shared: Iterable[Iterable[int]], problems: list[str]
) -> list[list[int]]:
    """The paging domains grouped by IOAS, in order of their smallest domain id."""
    owner: dict[int, int] = {}
    groups: list[list[int]] = []
    for g in shared:
        ids = sorted(set(g))
        for d in ids:
            if d not in paging:
                problems.append(f"shared group {ids}: {d} is not a paging domain in the hardware")
            elif d in owner:
                problems.append(f"domain {d} is in more than one shared group")
            else:
                owner[d] = len(groups)
        groups.append([d for d in ids if owner.get(d) == len(groups)])
    for d in sorted(paging):
        if d not in owner:
            owner[d] = len(groups)
            groups.append([d])
    groups = [g for g in groups if g]
    for g in groups:
        first = paging[g[0]]
        for d in g[1:]:
            if paging[d].mappings != first.mappings:
                problems.append(
                    f"domains {g[0]} and {d} would share an IOAS but their mappings differ "
                    f"({len(first.mappings)} vs {len(paging[d].mappings)} runs)"
                )
    return sorted(groups, key=lambda g: g[0])


def rebuild(
    ctx: IommufdContext,
    backend: HardwareBackend,
    shared: Iterable[Iterable[int]] = (),
    blocked: Iterable[str] = (),
    nest_parents: Iterable[int] = (),
) -> None:
    """Fill the empty ``ctx`` with objects reproducing ``backend``'s state."""
    from .context import _MAX_ID

    try:
        state = backend.query()
    except BackendError as e:
        raise IommufdError("EIO", f"hardware query failed: {e}") from e
    problems: list[str] = []
    doms = {d.domain: d for d in state.domains}
    paging = {i: d for i, d in doms.items() if d.type == "paging"}
    for i in doms:
        if not 1 <= i <= _MAX_ID:
            problems.append(f"domain {i} is not a valid iommufd object id")

    # who uses which paging domain: nested children and devices
    children: dict[int, set[int]] = {i: set() for i in paging}
    for i, d in sorted(doms.items()):
        if d.type != "nested":
            continue
        if d.parent is None or d.parent not in doms:
            problems.append(f"nested domain {i}: its parent domain {d.parent} is missing")
        elif d.parent not in paging:
            problems.append(f"nested domain {i}: its parent {d.parent} is not a paging domain")
        else:
            children[d.parent].add(i)
        if d.s1_root is None:
            problems.append(f"nested domain {i} has no stage-1 root")
        if d.ias != 48:
            problems.append(f"nested domain {i}: stage-1 address width {d.ias} is not 48")
        if d.mappings:
            problems.append(f"nested domain {i} holds mappings")

    attached: dict[str, int | None] = {}
    modes = {dv.device: dv.mode for dv in state.devices}
    for dv in state.devices:
        if dv.mode == "domain":
            if dv.domain is None or dv.domain not in doms:
                problems.append(f"device {dv.device} is attached to unknown domain {dv.domain}")
                continue
            attached[dv.device] = dv.domain
    infos: dict[str, DeviceHwInfo] = {}
    for name in attached:
        try:
            infos[name] = backend.device_info(name)
        except BackendError as e:
            problems.append(f"device {name}: {e}")
    for name in blocked:
        try:
            info = backend.device_info(name)
        except BackendError as e:
            problems.append(f"device {name}: {e}")
            continue
        mode = modes.get(info.device)
        if mode != "blocked":
            problems.append(f"device {name} is to be bound blocked but is in mode {mode}")
            continue
        infos[info.device] = info
        attached[info.device] = None

    parents = set(nest_parents)
    for i in sorted(parents):
        if i not in paging:
            problems.append(f"NEST_PARENT {i} is not a paging domain in the hardware")
    groups = _groups(paging, shared, problems)
    default_platform = next((i.platform for i in infos.values()), "x86")
    if problems:
        raise RebuildError(problems)

    # ids: domains keep theirs; IOAS then DEVICE objects take the lowest free ones
    taken = set(doms)
    next_id = 1

    def new_id() -> int:
        nonlocal next_id
        while next_id in taken:
            next_id += 1
        taken.add(next_id)
        return next_id

    objects = ctx._objects
    ioas_of: dict[int, Ioas] = {}
    for g in groups:
        ioas = Ioas(new_id())
        objects[ioas.id] = ioas
        for m in paging[g[0]].mappings:
            area = Area(m.iova, m.size, m.addr, m.read, m.write, m.write)
            ioas.areas.add(area)
            ioas.holes.take(area.iova, area.last)
        for dom_id in g:
            ioas_of[dom_id] = ioas
    for name in sorted(attached):
        bound = Device(new_id(), name, infos[name])
        objects[bound.id] = bound
        ctx._by_name[name] = bound.id

    for i in sorted(paging):
        d = paging[i]
        users = {n for n, dom in attached.items() if dom == i}
        platforms: set[str] = {infos[n].platform for n in users} or {default_platform}
        if len(platforms) > 1:
            problems.append(f"domain {i}: devices of different platforms attached")
        platform = sorted(platforms)[0]
        hw = HwptPaging(
            i,
            ioas_of[i].id,
            platform,
            d.ias,
            nest_parent=bool(children[i]) or i in parents,
            auto=bool(users) and not children[i] and i not in parents,
        )
        objects[i] = hw
        ioas_of[i].hwpts.append(i)
        for start, last in ctx._aperture_resv(hw):
            ioas_of[i].reserved.append(Reserved(start, last, ("hwpt", i)))
        hw.children = set(children[i])
    for i, d in sorted(doms.items()):
        if d.type == "nested":
            assert d.parent is not None and d.s1_root is not None
            objects[i] = HwptNested(i, d.parent, d.s1_root, d.ias)

    for name, dom in sorted(attached.items()):
        dev = objects[ctx._by_name[name]]
        assert isinstance(dev, Device)
        if dom is None:
            continue
        hwpt = objects[dom]
        assert isinstance(hwpt, HwptPaging | HwptNested)
        parent = ctx._paging_of(dom)
        if not ctx._compatible(parent, dev.info):
            problems.append(f"device {name}: domain {dom} is incompatible with it")
        dev.hwpt_id = dom
        hwpt.devices.add(dev.id)
        ioas = ioas_of[parent.id]
        if not any(r.owner == ("device", dev.id) for r in ioas.reserved):
            for start, last in ctx._device_resv(dev):
                ioas.reserved.append(Reserved(start, last, ("device", dev.id)))

    seen: set[int] = set()
    for ioas in ioas_of.values():
        if ioas.id in seen:
            continue
        seen.add(ioas.id)
        for r in ioas.reserved:
            hit = ioas.areas.first_overlapping(r.start, r.last)
            if hit is not None:
                what = "aperture of domain" if r.owner[0] == "hwpt" else "reserved region of device"
                problems.append(
                    f"IOAS {ioas.id}: mapping at {hit.iova:#x} lies in the {what} "
                    f"{r.owner[1]} [{r.start:#x}, {r.last:#x}]"
                )
        ioas.rebuild_holes()
    pins = [a for ioas in _unique(ioas_of.values()) for a in ioas.areas]
    if not problems:
        try:
            ctx.account.pin(ctx._pfns(pins))
        except IommufdError as e:
            problems.append(f"pinning the mapped memory: {e}")
        else:
            problems = [f"after rebuild: {p}" for p in ctx.check_hardware()]
            if problems:
                ctx.account.unpin(ctx._pfns(pins))
    if problems:
        objects.clear()
        ctx._by_name.clear()
        raise RebuildError(problems)


def _unique(ioases: Iterable[Ioas]) -> list[Ioas]:
    out: dict[int, Ioas] = {}
    for i in ioases:
        out[i.id] = i
    return list(out.values())


__all__ = ["RebuildError", "rebuild"]
