"""sPAPR DMA windows over QMP: :class:`WindowBackend` on the ``x-iommulab-spapr-*`` commands.

On pseries the partitionable endpoint is the PHB: every device on a PHB
shares its TCE tables.  A device (qdev id or QOM path) is resolved to its
PHB by walking ``parent_bus`` links up to a bus of a PHB that
``x-iommulab-spapr-query-phbs`` lists.  Window index ``i`` of a device is the
PHB's ``liobns[i]`` (0: the 32-bit default window's table, 1: the DDW's),
so an index names the same TCE table whichever window it holds now.

Capabilities are the host side's (docs/spapr.md "Host-side windows", the
equivalent of VFIO's SPAPR_TCE_CREATE), all as the device reports them in
``x-iommulab-spapr-query-phbs``: as many windows as the PHB has TCE tables,
the page sizes and the largest window of the PHB's ``host-windows``, the
64-bit window at the policy's ``dma64-offset``.  TCEs are read in chunks of
``host-windows``' ``read-tces-max`` (the QMP client's read buffer holds the
largest, pyctl/qemu/qmp.py ``READ_LIMIT``).  The guest's own policy (what
RTAS offers the guest) is :meth:`SpaprQmpBackend.policy`.

Guest RTAS window changes arrive as ``X_IOMMULAB_SPAPR_WINDOW`` events;
:meth:`window_events` turns each into one :class:`WindowEvent` per device of
that PHB this backend has resolved (or the PHB's path if none).  Host-side
changes send no event (QEMU's rule).
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any, Literal

from pyctl.qemu.qmp import Address, QmpSession

from .backend import Window, WindowCaps, WindowEvent
from .errors import BackendError
from .qmp_backend import QmpBackend

TCE_READ = 1 << 0
TCE_WRITE = 1 << 1

_KIND: dict[str, Literal["created", "removed", "reset"]] = {
    "create": "created",
    "remove": "removed",
    "reset": "reset",
}


@dataclass(frozen=True, slots=True)
class TceEntry:
    """One valid TCE: the page at bus address ``bus`` maps real address ``addr``."""

    index: int
    bus: int
    addr: int
    read: bool
    write: bool


def decode_tces(window: Window, start: int, raw: bytes) -> list[TceEntry]:
    """TCEs (big-endian u64, address | W | R) from index ``start``; entries with R or W."""
    n = len(raw) // 8
    out: list[TceEntry] = []
    mask = ~((1 << window.page_shift) - 1) & ((1 << 64) - 1)
    for i, tce in enumerate(struct.unpack(f">{n}Q", raw[: 8 * n])):
        if tce & (TCE_READ | TCE_WRITE):
            idx = start + i
            out.append(
                TceEntry(
                    idx,
                    window.start + (idx << window.page_shift),
                    tce & mask,
                    bool(tce & TCE_READ),
                    bool(tce & TCE_WRITE),
                )
            )
    return out


class SpaprQmpBackend(QmpBackend):
    """A pseries QEMU's PHB windows (and, with ``iommu``, an ``iommulab-spapr-s2``)."""

    def __init__(
        self,
        address: Address | QmpSession,
        iommu: str = "s2",
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(address, iommu=iommu, timeout=timeout, connect_timeout=connect_timeout)
        self._win_events = self.session.listen(("X_IOMMULAB_SPAPR_WINDOW",))
        self._phb_of: dict[str, int] = {}  # device QOM path -> PHB index
        self._paths: dict[str, str] = {}  # name as given -> QOM path
        self._known: dict[tuple[int, int], Window] = {}  # (phb, liobn) -> last seen

    # -- PHBs and devices ------------------------------------------------------
    def phbs(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.execute("x-iommulab-spapr-query-phbs")
        for p in res:
            for w in p["windows"]:
                self._known[(p["phb"], w["liobn"])] = self._window(p, w)
        return res

    def _phb(self, index: int) -> dict[str, Any]:
        for p in self.phbs():
            if p["phb"] == index:
                return p
        raise BackendError(f"PHB {index} is gone")

    def policy(self, device: str) -> dict[str, Any]:
        """The guest's DDW policy of the device's PHB."""
        policy: dict[str, Any] = self._phb(self.phb_of(device))["policy"]
        return policy

    def _path(self, device: str) -> str:
        if not isinstance(device, str) or not device:
            raise BackendError("device must be a non-empty string")
        return device if device.startswith("/") else f"/machine/peripheral/{device}"

    def phb_of(self, device: str) -> int:
        """The index of the PHB a device sits on (behind bridges too)."""
        path = self._paths.get(device) or self._path(device)
        if path in self._phb_of:
            return self._phb_of[path]
        by_path: dict[str, int] = {p["path"]: p["phb"] for p in self.phbs()}
        cur = path
        for _ in range(64):
            try:
                bus = self.execute("qom-get", {"path": cur, "property": "parent_bus"})
            except BackendError as e:
                raise BackendError(f"device {device!r}: {e}") from e
            owner = str(bus).rsplit("/", 1)[0]
            if owner in by_path:
                self._paths[device] = path
                self._phb_of[path] = by_path[owner]
                return by_path[owner]
            cur = owner
        raise BackendError(f"device {device!r} is not on a PHB")

    @staticmethod
    def _window(phb: dict[str, Any], w: dict[str, Any]) -> Window:
        return Window(phb["liobns"].index(w["liobn"]), w["bus-offset"], w["size"], w["page-shift"])

    # -- WindowBackend -----------------------------------------------------------
    def window_caps(self, device: str) -> WindowCaps:
        p = self._phb(self.phb_of(device))
        host = p["host-windows"]
        shifts = tuple(int(s) for s in host["page-shifts"])
        max_tces = int(host["max-tces"])
        return WindowCaps(
            windows_supported=len(p["liobns"]),
            page_shifts=shifts,
            ddw_offset=p["policy"]["dma64-offset"],
            max_size=max_tces << max(shifts),
            max_tces=max_tces,
        )

    def windows(self, device: str) -> list[Window]:
        p = self._phb(self.phb_of(device))
        return sorted((self._window(p, w) for w in p["windows"]), key=lambda w: w.index)

    def window_info(self, device: str) -> list[tuple[Window, dict[str, Any]]]:
        """Windows with QEMU's details (liobn, entries, entries-in-use, faults, default)."""
        p = self._phb(self.phb_of(device))
        return sorted(
            ((self._window(p, w), w) for w in p["windows"]), key=lambda pair: pair[0].index
        )

    def create_window(self, device: str, page_shift: int, size: int, offset: int) -> Window:
        phb = self.phb_of(device)
        w = self.execute(
            "x-iommulab-spapr-window-create",
            {"phb": phb, "page-shift": page_shift, "size": size, "bus-offset": offset},
        )
        return self._window(self._phb(phb), w)

    def remove_window(self, device: str, index: int) -> None:
        p = self._phb(self.phb_of(device))
        if not 0 <= index < len(p["liobns"]):
            raise BackendError(f"no window {index}: the PHB has {len(p['liobns'])} TCE tables")
        liobn = p["liobns"][index]
        if not any(w["liobn"] == liobn for w in p["windows"]):
            raise BackendError(f"window {index} (LIOBN {liobn:#x}) is not enabled")
        self.execute("x-iommulab-spapr-window-remove", {"phb": p["phb"], "liobn": liobn})

    def reset_windows(self, device: str) -> list[Window]:
        """What the guest's ibm,reset-pe-dma-window does (only the default window)."""
        phb = self.phb_of(device)
        self.execute("x-iommulab-spapr-window-reset", {"phb": phb})
        return self.windows(device)

    def read_tces(
        self, device: str, index: int, start: int = 0, count: int | None = None
    ) -> list[TceEntry]:
        """The valid TCEs of window ``index`` (all of it by default), decoded."""
        return self.read_phb_tces(self.phb_of(device), index, start, count)

    def read_phb_tces(
        self, phb: int, index: int, start: int = 0, count: int | None = None
    ) -> list[TceEntry]:
        """:meth:`read_tces` by PHB index."""
        p = self._phb(phb)
        liobns: list[int] = p["liobns"]
        win = next((self._window(p, w) for w in p["windows"]
                    if liobns.index(w["liobn"]) == index), None)  # fmt: skip
        if win is None:
            raise BackendError(f"window {index} of PHB {phb} is not enabled")
        liobn = liobns[index]
        chunk = int(p["host-windows"]["read-tces-max"])
        end = win.size >> win.page_shift if count is None else start + count
        out: list[TceEntry] = []
        pos = start
        while pos < end:
            n = min(chunk, end - pos)
            r = self.execute(
                "x-iommulab-spapr-read-tces", {"liobn": liobn, "start": pos, "count": n}
            )
            out.extend(decode_tces(win, pos, base64.b64decode(r["data"])))
            if not r["count"]:
                break
            pos += int(r["count"])
        return out

    def window_events(self) -> list[WindowEvent]:
        out: list[WindowEvent] = []
        phbs = {p["phb"]: p for p in self.phbs()}
        for ev in self.session.drain(self._win_events):
            data = ev["data"]
            phb = phbs.get(data["phb"])
            if phb is None:
                continue
            if "window" in data:
                win = self._window(phb, data["window"])
            else:
                win = self._known.get(
                    (data["phb"], data["liobn"]),
                    Window(phb["liobns"].index(data["liobn"]), 0, 0, 0),
                )
            devices = [d for d, i in self._phb_of.items() if i == data["phb"]] or [phb["path"]]
            out.extend(WindowEvent(d, _KIND[data["action"]], win) for d in devices)
        return out
