"""Following hot-unplug: QEMU's DEVICE_DELETED unbinds the device from the model.

When a device behind the vIOMMU is unplugged (``device_del`` and the guest's
ack), the vIOMMU forgets it at once: it is detached from its domain and no
longer listed (docs/engine.md, "Hot-unplug").  QEMU then sends DEVICE_DELETED
with the device's QOM ``path`` (and its qdev id as ``device``, if it had one).
:class:`UnplugFollower` matches the paths against the bound DEVICE objects and
removes each one found (:meth:`IommufdContext.device_removed`): the DEVICE
object is destroyed, its HWPT reference dropped, and an automatic HWPT it was
the last user of freed, as the kernel's vfio_df_unbind_iommufd() ->
iommufd_device_unbind() do when the VMM closes the file of a removed device.

Events come from :meth:`pyctl.iommufd.qmp_backend.QmpBackend.events` (which
keeps DEVICE_DELETED).  Draining it consumes the events: a VMM that also
follows memory hotplug (:meth:`pyctl.iommufd.guestmap.GuestRamMap.follow`)
drains once and gives the same list to both (:meth:`UnplugFollower.handle`
here, a list-backed source there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .context import IommufdContext
from .guestmap import EventSource
from .objects import Device


def deleted_paths(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The QOM paths of the DEVICE_DELETED events, in order (other events skipped)."""
    return [
        e["data"]["path"]
        for e in events
        if e.get("event") == "DEVICE_DELETED" and "path" in e.get("data", {})
    ]


class UnplugFollower:
    """Removes from ``ctx`` the bound devices QEMU reports deleted."""

    def __init__(self, ctx: IommufdContext) -> None:
        self.ctx = ctx

    def handle(self, events: Iterable[Mapping[str, Any]]) -> list[int]:
        """Remove the bound devices among the deleted ones; returns their DEVICE ids.

        A deleted device that is not bound (never bound, unbound already, or
        not behind this vIOMMU) is no business of the model's.
        """
        paths = deleted_paths(events)
        if not paths:
            return []
        # the backend re-reads its device list, so that a deleted name no longer
        # resolves (a later bind of it is ENOENT, as for a removed device file)
        self.ctx.backend.devices()
        bound = {o.name: oid for oid, o in self.ctx.objects().items() if isinstance(o, Device)}
        removed: list[int] = []
        for path in paths:
            dev_id = bound.pop(path, None)
            if dev_id is not None:
                self.ctx.device_removed(dev_id)
                removed.append(dev_id)
        return removed

    def follow(self, source: EventSource) -> list[int]:
        """Drain ``source`` (e.g. a QmpBackend) and :meth:`handle` what it had."""
        return self.handle(source.events())
