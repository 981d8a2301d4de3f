"""The default VMM behaviour: all guest RAM mapped at IOVA = guest physical, following hotplug.

A VMM that gives a device to a guest without a vIOMMU visible to the guest
maps every RAM range of the guest into the device's IOAS at its guest-physical
address, so the guest's driver may DMA anywhere.  :class:`GuestRamMap` does
that for one IOAS and keeps it true when memory comes and goes:

* :meth:`GuestRamMap.sync` re-reads QEMU's flat view of guest memory
  (:func:`pyctl.qemu.guestram.guest_ram`), maps ranges that appeared (a
  hotplugged pc-dimm) and unmaps ranges that vanished (an unplugged one);
* :meth:`GuestRamMap.follow` looks at QEMU's memory-device events
  (DEVICE_DELETED, MEMORY_DEVICE_SIZE_CHANGE) and syncs when one arrived.
  QEMU 10.0 sends no event when a device is *added* (``device_add`` simply
  returns), so whoever plugs memory calls :meth:`sync` afterwards, or
  :meth:`hotplug_dimm` plugs and syncs in one step.

Large ranges are mapped in pieces of ``batch`` bytes (one IOAS_MAP each, one
area each) and ``progress(done_bytes, total_bytes)`` is called after each.

:meth:`GuestRamMap.resume` adopts what an IOAS already maps (a control plane
that died half-way, its IOAS rebuilt from the device: rebuild.py, recover.py):
what is already mapped at IOVA = GPA read/write counts as done, only the gaps
are mapped, and a guest RAM address mapped any other way is an error naming
it, raised before anything is changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyctl.qemu.guestram import QmpLike, RamRange, guest_ram

from .context import IommufdContext
from .uapi import FIXED_IOVA, READABLE, WRITEABLE

Progress = Callable[[int, int], None]


class GuestRamConflict(ValueError):
    """Guest RAM whose IOVA is mapped, but not to itself read/write: resuming would
    need to unmap someone else's mapping, which map-ram does not do."""


class EventSource(Protocol):
    def events(self) -> list[dict[str, Any]]: ...


@dataclass
class SyncResult:
    added: list[RamRange] = field(default_factory=list)
    removed: list[RamRange] = field(default_factory=list)


class GuestRamMap:
    """Guest RAM identity-mapped (IOVA = GPA, read/write) into IOAS ``ioas_id``."""

    def __init__(
        self,
        ctx: IommufdContext,
        ioas_id: int,
        qmp: QmpLike,
        *,
        batch: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        if batch is not None and (batch <= 0 or batch % 4096):
            raise ValueError(f"batch {batch} must be a positive multiple of 4096")
        self.ctx = ctx
        self.ioas_id = ioas_id
        self.qmp = qmp
        self.batch = batch
        self.progress = progress
        #: the RAM ranges mapped now, by start address
        self.mapped: dict[int, RamRange] = {}

    def _split(self, start: int, size: int) -> list[tuple[int, int]]:
        """[start, start + size) in pieces of ``batch`` bytes (one IOAS_MAP each)."""
        step = self.batch or size
        return [(s, min(step, start + size - s)) for s in range(start, start + size, step)]

    def _map_pieces(self, pieces: list[tuple[int, int]], done: int, total: int) -> int:
        """Map ``pieces`` at IOVA = GPA, read/write, reporting progress from ``done`` of
        ``total`` bytes; all or nothing (on an error the pieces this call mapped are
        unmapped again).  Returns ``done`` plus the bytes mapped."""
        mapped: list[tuple[int, int]] = []
        try:
            for start, size in pieces:
                self.ctx.ioas_map(
                    self.ioas_id, start, size, FIXED_IOVA | READABLE | WRITEABLE, start
                )
                mapped.append((start, size))
                done += size
                if self.progress is not None:
                    self.progress(done, total)
        except BaseException:
            for start, size in reversed(mapped):
                self.ctx.ioas_unmap(self.ioas_id, start, size)
            raise
        return done

    def _map(self, ranges: Iterable[RamRange]) -> None:
        """Each range all or nothing; the ranges before a failing one stay mapped."""
        todo = list(ranges)
        total = sum(r.size for r in todo)
        done = 0
        for r in todo:
            done = self._map_pieces(self._split(r.start, r.size), done, total)
            self.mapped[r.start] = r

    def missing(self, ranges: Iterable[RamRange]) -> list[tuple[RamRange, int, int]]:
        """The parts (range, start, size) of ``ranges`` the IOAS does not map yet.

        Raises :class:`GuestRamConflict` naming the first range whose IOVA is
        mapped other than to itself read/write; nothing is changed.
        """
        areas = self.ctx.areas(self.ioas_id)
        gaps: list[tuple[RamRange, int, int]] = []
        for r in ranges:
            cur = r.start
            for a in areas:
                if a.last < r.start or a.iova > r.last:
                    continue
                if a.phys != a.iova or not (a.read and a.write):
                    rw = ("read" if a.read else "") + ("/write" if a.write else "")
                    raise GuestRamConflict(
                        f"guest RAM {r.name} [{r.start:#x}, {r.last:#x}] is already mapped "
                        f"differently in IOAS {self.ioas_id}: IOVA {a.iova:#x}+{a.length:#x} "
                        f"-> {a.phys:#x} ({rw.strip('/')}), not IOVA = GPA read/write; "
                        "unmap it first"
                    )
                if a.iova > cur:
                    gaps.append((r, cur, a.iova - cur))
                cur = max(cur, a.last + 1)
            if cur <= r.last:
                gaps.append((r, cur, r.last + 1 - cur))
        return gaps

    def resume(self) -> list[tuple[RamRange, int, int]]:
        """Map the guest RAM the IOAS does not map yet (all or nothing: on an error the
        pieces mapped by this call are unmapped again); returns the parts mapped."""
        ram = guest_ram(self.qmp)
        gaps = self.missing(ram)
        pieces = [p for _, start, size in gaps for p in self._split(start, size)]
        self._map_pieces(pieces, 0, sum(size for _, size in pieces))
        self.mapped = {r.start: r for r in ram}
        return gaps

    def _unmap(self, ranges: Iterable[RamRange]) -> None:
        for r in ranges:
            self.ctx.ioas_unmap(self.ioas_id, r.start, r.size)
            del self.mapped[r.start]

    def sync(self) -> SyncResult:
        """Make the IOAS hold exactly the guest's RAM now; returns what changed."""
        now = {r.start: r for r in guest_ram(self.qmp)}
        gone = [r for s, r in sorted(self.mapped.items()) if now.get(s) != r]
        new = [r for s, r in sorted(now.items()) if self.mapped.get(s) != r]
        self._unmap(gone)
        self._map(new)
        return SyncResult(new, gone)

    def map_all(self) -> list[RamRange]:
        """Map all guest RAM (the first :meth:`sync`); returns the ranges mapped."""
        return self.sync().added

    def follow(self, source: EventSource) -> SyncResult | None:
        """Sync if QEMU reported a memory device change since last time, else None."""
        if not source.events():
            return None
        return self.sync()

    def hotplug_dimm(self, dimm_id: str, size: int, backend_id: str | None = None) -> SyncResult:
        """Plug a ``size``-byte pc-dimm (memory-backend-ram) over QMP and map it."""
        mem = backend_id or f"{dimm_id}-mem"
        self.qmp.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": mem, "size": size})
        try:
            self.qmp.cmd("device_add", driver="pc-dimm", id=dimm_id, memdev=mem)
        except BaseException:
            self.qmp.cmd("object-del", id=mem)
            raise
        return self.sync()
