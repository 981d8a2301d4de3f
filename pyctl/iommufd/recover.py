"""Recovering after the control plane died: what a rebuilt context adopts and what it reclaims.

A control plane killed with SIGKILL leaves the device as it was at that
instant; :meth:`IommufdContext.from_hardware` rebuilds a model of it
(rebuild.py).  Two questions follow, answered here on that rebuilt model:

* :func:`attachment` -- is a device already bound, and to which HWPT and
  IOAS is it attached?  A resumed command adopts them instead of binding
  again (EINVAL "already bound") or mapping again (EEXIST).
* :func:`orphans` -- which domains does nothing use?  A crash between
  IOMMU_HWPT_ALLOC and the attach leaves a domain no device is attached to.
  The kernel would free it with the closed file; the lab's device keeps it.

An orphan is a domain no device is attached to and that nothing can be tied
to: a nested domain with no device; a paging domain with no device, alone in
its IOAS (not grouped with ``--shared``), not named as a NEST_PARENT to keep
(``keep``, the rebuild's ``nest_parents``), and whose nested children, if
any, are all orphans themselves (freeing them would leave it childless and
unattached: an explicit HWPT the rebuild could tie to nothing).
:func:`reclaim` frees them, children first, with the IOAS the rebuild made
for each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .context import IommufdContext
from .objects import Device, HwptNested, HwptPaging, Ioas, Object


@dataclass(frozen=True, slots=True)
class Attachment:
    """A bound device: its DEVICE id, and the HWPT and IOAS it is attached to (None: blocked)."""

    dev_id: int
    hwpt_id: int | None
    ioas_id: int | None


@dataclass(frozen=True, slots=True)
class Orphan:
    domain: int
    type: str  # "paging" or "nested"
    #: the nested domain's parent; None for a paging domain
    parent: int | None
    #: the paging domain's IOAS (the rebuild made it for this domain alone)
    ioas: int | None
    mappings: int
    mapped: int


def attachment(ctx: IommufdContext, device: str) -> Attachment | None:
    """The bound DEVICE named ``device`` (its QOM path as the backend reports it), or None."""
    objs = ctx.objects()
    dev = next((o for o in objs.values() if isinstance(o, Device) and o.name == device), None)
    if dev is None:
        return None
    if dev.hwpt_id is None:
        return Attachment(dev.id, None, None)
    hwpt = objs[dev.hwpt_id]
    if isinstance(hwpt, HwptNested):  # the IOAS is the parent's (the stage 2)
        hwpt = objs[hwpt.parent_id]
    assert isinstance(hwpt, HwptPaging)
    return Attachment(dev.id, dev.hwpt_id, hwpt.ioas_id)


def _orphan_ids(objs: dict[int, Object], keep: set[int]) -> set[int]:
    found = {i for i, o in objs.items() if isinstance(o, HwptNested) and not o.devices}
    for i, o in objs.items():
        if not isinstance(o, HwptPaging) or o.devices or i in keep:
            continue
        ioas = objs[o.ioas_id]
        assert isinstance(ioas, Ioas)
        if ioas.hwpts == [i] and o.children <= found:
            found.add(i)
    return found


def orphans(ctx: IommufdContext, keep: Iterable[int] = ()) -> list[Orphan]:
    """The orphan domains of a rebuilt context, children before parents."""
    objs = ctx.objects()
    out: list[Orphan] = []
    for i in sorted(_orphan_ids(objs, set(keep))):
        o = objs[i]
        if isinstance(o, HwptNested):
            out.append(Orphan(i, "nested", o.parent_id, None, 0, 0))
        else:
            assert isinstance(o, HwptPaging)
            areas = ctx.areas(o.ioas_id)
            mapped = sum(a.length for a in areas)
            out.append(Orphan(i, "paging", None, o.ioas_id, len(areas), mapped))
    return sorted(out, key=lambda x: (x.type != "nested", x.domain))


def reclaim(ctx: IommufdContext, found: Iterable[Orphan]) -> list[Orphan]:
    """Free ``found`` (from :func:`orphans`): each domain (IOMMU_DESTROY, the device frees
    it and its mappings), then the IOAS it leaves empty.  Returns those freed, in order;
    an error (IommufdError) stops at the domain that failed, the ones before it freed."""
    freed: list[Orphan] = []
    for o in sorted(found, key=lambda x: (x.type != "nested", x.domain)):
        ctx.destroy(o.domain)
        if o.ioas is not None:
            ctx.destroy(o.ioas)  # the rebuild's IOAS of this domain: model only
        freed.append(o)
    return freed


__all__ = ["Attachment", "Orphan", "attachment", "orphans", "reclaim"]
