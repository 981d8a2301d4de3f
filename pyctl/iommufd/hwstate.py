"""The seam between the model and what the hardware holds.

``HwStateSeam`` is public: ``expected()`` is what the device must report for
this context (``x-iommulab-query``'s shape), ``check()`` lists the
differences from the backend's ``query()``, and ``restore(plan)`` installs
objects that reproduce a hardware state (a control plane reconnecting,
rebuild.py), with the reservations, apertures and pins the ioctls would have
made.  Nothing else reaches into the context's objects from outside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .areas import Area
from .backend import DeviceHwInfo, HwDevice, HwDomain, HwState, MapEntry, merged
from .device import device_resv, owner
from .errors import IommufdError
from .hw_pagetable import compatible
from .io_pagetable import DomainInfo, Reserved
from .objects import Device, HwptNested, HwptPaging, Ioas
from .objtable import Ictx
from .pages import entries, new_pages
from .ppc64_attach import check_tces
from .ppc64_domain import HwptPpc64


@dataclass(frozen=True, slots=True)
class PlannedPaging:
    id: int
    #: index of its IOAS in ``RestorePlan.ioases``
    ioas: int
    platform: str
    ias: int
    nest_parent: bool
    auto: bool
    pgsize_bitmap: int = 1 << 12


@dataclass(frozen=True, slots=True)
class PlannedNested:
    id: int
    parent: int
    s1_root: int
    ias: int


@dataclass(frozen=True, slots=True)
class PlannedDevice:
    info: DeviceHwInfo
    #: the HWPT (domain id) it is attached to, None = bound and blocked
    hwpt: int | None


@dataclass
class RestorePlan:
    """Objects to install: IOAS (their areas), HWPTs by domain id, bound devices."""

    ioases: list[list[MapEntry]] = field(default_factory=list)
    paging: list[PlannedPaging] = field(default_factory=list)
    nested: list[PlannedNested] = field(default_factory=list)
    devices: list[PlannedDevice] = field(default_factory=list)


class HwStateSeam:
    """Expected hardware state, the check against it, and restoring from it."""

    def __init__(self, ictx: Ictx) -> None:
        self._ictx = ictx

    def expected(self) -> HwState:
        """What the hardware must hold for this context's domains and devices."""
        table = self._ictx.table
        doms: list[HwDomain] = []
        devs: list[HwDevice] = []
        for oid in table:
            o = table.find(oid)
            if isinstance(o, HwptPpc64) or (
                isinstance(o, Device) and isinstance(table.find(o.hwpt_id or -1), HwptPpc64)
            ):
                continue  # a PE's domain is its TCEs: ppc64_attach.check_tces()
            if isinstance(o, HwptPaging):
                ioas = self._ictx.ioas(o.ioas_id)
                nested = [n for n in o.children if isinstance(table.find(n), HwptNested)]
                maps = tuple(merged(entries(ioas.areas)))
                doms.append(
                    HwDomain(oid, "paging", o.ias, None, None, len(o.devices), len(nested), maps)
                )
            elif isinstance(o, HwptNested):
                doms.append(
                    HwDomain(oid, "nested", o.ias, o.parent_id, o.s1_root, len(o.devices), 0)
                )
            elif isinstance(o, Device):
                if o.hwpt_id is None:
                    devs.append(HwDevice(o.name, "blocked", None))
                else:
                    devs.append(HwDevice(o.name, "domain", o.hwpt_id))
        return HwState(tuple(doms), tuple(sorted(devs, key=lambda d: d.device)))

    def check(self) -> list[str]:
        """Differences between the model and the backend's query (empty = in sync)."""
        want = self.expected()
        have = self._ictx.backend.query()
        problems: list[str] = []
        have_doms = {d.domain: d for d in have.domains}
        want_ids = {d.domain for d in want.domains}
        for d in want.domains:
            h = have_doms.get(d.domain)
            if h is None:
                problems.append(f"domain {d.domain} missing in hardware")
            elif h != d:
                problems.append(f"domain {d.domain} differs: model {d}, hardware {h}")
        for i in have_doms:
            if i not in want_ids:
                problems.append(f"hardware domain {i} unknown to the model")
        have_devs = {d.device: d for d in have.devices}
        infos = {o.name: o.info for o in map(self._ictx.table.find, self._ictx.table)
                 if isinstance(o, Device)}  # fmt: skip
        for dv in want.devices:
            if dv.device not in have_devs and infos[dv.device].platform == "spapr":
                continue  # a device on a PE has no attachment of its own (spapr_qmp.py)
            if have_devs.get(dv.device) != dv:
                problems.append(
                    f"device {dv.device}: model {dv}, hardware {have_devs.get(dv.device)}"
                )
        return problems + check_tces(self._ictx)

    def restore(self, plan: RestorePlan) -> list[str]:
        """Install ``plan`` into an empty context; returns the problems found.

        With problems the context is left empty; the hardware is never touched.
        """
        ictx = self._ictx
        if len(ictx.table):
            raise IommufdError("EBUSY", "restore needs an empty context")
        problems = self._install(plan)
        if not problems:
            pins = [a for i in self._ioases() for a in i.areas if i.hwpts]
            try:
                ictx.pins.pin(pins)
            except IommufdError as e:
                problems.append(f"pinning the mapped memory: {e}")
            else:
                problems = [f"after rebuild: {p}" for p in self.check()]
                if problems:
                    ictx.pins.unpin(pins)
        if problems:
            ictx.table.clear()
            ictx.by_name.clear()
        return problems

    def _ioases(self) -> list[Ioas]:
        table = self._ictx.table
        return [o for o in (table.find(i) for i in table) if isinstance(o, Ioas)]

    def _install(self, plan: RestorePlan) -> list[str]:
        ictx = self._ictx
        table = ictx.table
        problems: list[str] = []
        # domains keep their ids; IOAS then DEVICE objects take the lowest free ones
        taken = {p.id for p in plan.paging} | {n.id for n in plan.nested}
        next_id = 1

        def new_id() -> int:
            nonlocal next_id
            while next_id in taken:
                next_id += 1
            taken.add(next_id)
            return next_id

        ioases: list[Ioas] = []
        for maps in plan.ioases:
            ioas = Ioas(new_id(), ictx.new_iopt())
            for m in maps:
                area = Area(m.iova, m.size, m.addr, m.read, m.write, m.write, new_pages())
                ioas.iopt.areas.add(area)
                ioas.iopt.holes.take(area.iova, area.last)
            table.add(ioas)
            ioases.append(ioas)
        devs: list[tuple[Device, int | None]] = []
        for pd in sorted(plan.devices, key=lambda d: d.info.device):
            dev = Device(new_id(), pd.info.device, pd.info)
            table.add(dev)
            ictx.by_name[dev.name] = dev.id
            devs.append((dev, pd.hwpt))
        for p in sorted(plan.paging, key=lambda p: p.id):
            iopt = ioases[p.ioas].iopt
            table.add(
                HwptPaging(
                    p.id,
                    ioases[p.ioas].id,
                    p.platform,
                    p.ias,
                    p.nest_parent,
                    p.auto,
                    pgsize_bitmap=p.pgsize_bitmap,
                )
            )
            dom = DomainInfo(p.id, p.pgsize_bitmap, p.ias)
            iopt.add_restored_domain(dom)
            iopt.reserved.extend(_reserved(dom.aperture_resv(), ("hwpt", p.id)))
        for n in sorted(plan.nested, key=lambda n: n.id):
            table.add(HwptNested(n.id, n.parent, n.s1_root, n.ias))
            parent = table.find(n.parent)
            assert isinstance(parent, HwptPaging)
            parent.children.add(n.id)
        for dev, hid in devs:
            if hid is None:
                continue
            hwpt = table.find(hid)
            assert isinstance(hwpt, HwptPaging | HwptNested)
            paging = ictx.paging_of(hid)
            if not compatible(paging, dev.info):
                problems.append(f"device {dev.name}: domain {hid} is incompatible with it")
            dev.hwpt_id = hid
            hwpt.devices.add(dev.id)
            iopt = ictx.ioas(paging.ioas_id).iopt
            regions = [r for r in device_resv(ictx, dev) if r.kind != "direct-relaxable"]
            iopt.reserved.extend(_reserved([(r.start, r.last) for r in regions], owner(dev)))
        for ioas in ioases:
            for r in ioas.iopt.reserved:
                hit = ioas.iopt.areas.first_overlapping(r.start, r.last)
                if hit is not None:
                    what = (
                        "aperture of domain"
                        if r.owner[0] == "hwpt"
                        else "reserved region of device"
                    )
                    problems.append(
                        f"IOAS {ioas.id}: mapping at {hit.iova:#x} lies in the {what} "
                        f"{r.owner[1]} [{r.start:#x}, {r.last:#x}]"
                    )
            ioas.iopt.rebuild_holes()
        return problems


def _reserved(ranges: list[tuple[int, int]], who: tuple[str, int]) -> list[Reserved]:
    return [Reserved(s, e, who) for s, e in ranges]
