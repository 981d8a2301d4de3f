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

from .backend import DEFAULT_PGSIZE_BITMAP, DeviceHwInfo, HardwareBackend, HwDomain
from .errors import BackendError, IommufdError
from .hwstate import HwStateSeam, PlannedDevice, PlannedNested, PlannedPaging, RestorePlan
from .objtable import MAX_ID


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
    seam: HwStateSeam,
    backend: HardwareBackend,
    shared: Iterable[Iterable[int]] = (),
    blocked: Iterable[str] = (),
    nest_parents: Iterable[int] = (),
) -> None:
    """Fill the empty context behind ``seam`` with objects reproducing ``backend``'s state."""
    try:
        state = backend.query()
    except BackendError as e:
        raise IommufdError("EIO", f"hardware query failed: {e}") from e
    problems: list[str] = []
    doms = {d.domain: d for d in state.domains}
    paging = {i: d for i, d in doms.items() if d.type == "paging"}
    for i in doms:
        if not 1 <= i <= MAX_ID:
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
    default = next(iter(infos.values()), None)
    if problems:
        raise RebuildError(problems)

    plan = RestorePlan()
    ioas_of: dict[int, int] = {}
    for n, g in enumerate(groups):
        plan.ioases.append(list(paging[g[0]].mappings))
        for dom_id in g:
            ioas_of[dom_id] = n
    for i in sorted(paging):
        d = paging[i]
        users = [infos[n] for n, dom in attached.items() if dom == i]
        platforms = {u.platform for u in users}
        if len(platforms) > 1:
            problems.append(f"domain {i}: devices of different platforms attached")
        like = min(users, key=lambda u: u.device) if users else default
        plan.paging.append(
            PlannedPaging(
                i,
                ioas_of[i],
                like.platform if like else "x86",
                d.ias,
                nest_parent=bool(children[i]) or i in parents,
                auto=bool(users) and not children[i] and i not in parents,
                pgsize_bitmap=like.pgsize_bitmap if like else DEFAULT_PGSIZE_BITMAP,
            )
        )
    for i, d in sorted(doms.items()):
        if d.type == "nested":
            assert d.parent is not None and d.s1_root is not None
            plan.nested.append(PlannedNested(i, d.parent, d.s1_root, d.ias))
    plan.devices = [PlannedDevice(infos[n], dom) for n, dom in sorted(attached.items())]
    if not problems:
        problems = seam.restore(plan)
    if problems:
        raise RebuildError(problems)


__all__ = ["RebuildError", "rebuild"]
