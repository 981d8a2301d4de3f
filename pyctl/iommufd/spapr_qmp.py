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
import contextlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pyctl.qemu.qmp import Address, QmpSession, memfd_from

from .backend import AttachMode, DeviceHwInfo, Window, WindowCaps, WindowEvent
from .errors import BackendError
from .hwinfo import device_hw_info
from .ppc64_hw import PeWindow
from .qmp_backend import QmpBackend, owner_token

TCE_READ = 1 << 0
TCE_WRITE = 1 << 1
#: payloads from this size go as a memfd (one copy less than base64 in JSON)
FD_THRESHOLD = 64 * 1024

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
        self._tce_devices: dict[str, DeviceHwInfo] = {}  # devices on a PE, by name and path
        self._liobns: dict[tuple[int, int], int] = {}  # (phb, slot) -> LIOBN (fixed per PHB)
        self._pe_owner: dict[int, tuple[str, str]] = {}  # phb -> (QOM path, token) claimed

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

    # -- devices on a PE (no vIOMMU above them) ------------------------------------
    def device_info(self, device: str) -> DeviceHwInfo:
        """A requester of the s2, or a device on a PHB (``type`` spapr-tce) by id or path."""
        try:
            return super().device_info(device)
        except BackendError:
            pass
        answer = self.execute("x-iommulab-query-hw-info", {"device": device})
        if answer["type"] != "spapr-tce":
            raise BackendError(f"device {device!r} is neither behind {self.iommu} nor on a PE")
        info = device_hw_info(answer)
        self._tce_devices[device] = self._tce_devices[info.device] = info
        if info.spapr is not None and info.spapr.phb is not None:  # its PE, for events
            self._paths[device] = info.device
            self._phb_of[info.device] = info.spapr.phb
        return info

    def attach(self, device: str, mode: AttachMode, domain: int | None = None) -> None:
        """A device on a PE has no attachment of its own: the model attaches its PE's
        windows (ppc64_attach.py).  Binding it (``blocked``) leaves the PE as it is:
        the PE is set BLOCKED when the model's last device of it detaches."""
        if device not in self._tce_devices:
            super().attach(device, mode, domain)
        elif mode != "blocked":
            raise BackendError(f"device {device!r} is on a PE: attach a PPC64 domain")

    # -- TceBackend (ppc64_hw.py) ----------------------------------------------------
    def pe_of(self, device: str) -> int:
        return self.phb_of(device)

    def claim_pe(self, pe: int) -> None:
        """Own the PHB's host side (docs/qmp.md "Ownership"; idempotent): the host-side
        commands then carry the token; another live owner is a BackendError naming it,
        one whose connection is closed is taken over."""
        if pe in self._pe_owner:
            return
        path = str(self._phb(pe)["path"])
        token = self.owner or owner_token()
        before = self.execute("x-iommulab-query-owner", {"device": path})
        gone = before.get("owner") not in (None, token) and not before["connected"]
        self.execute("x-iommulab-owner-claim", {"device": path, "owner": token, "force": gone})
        self._pe_owner[pe] = (path, token)

    def _with_owner(self, pe: int, args: dict[str, object]) -> dict[str, object]:
        if pe in self._pe_owner:
            args["owner"] = self._pe_owner[pe][1]
        return args

    def close(self) -> None:
        """Release the PHBs claimed, then as :meth:`QmpBackend.close`."""
        for path, token in self._pe_owner.values():
            if self.session.connected:
                with contextlib.suppress(BackendError):  # taken over meanwhile
                    self.execute("x-iommulab-owner-release", {"device": path, "owner": token})
        self._pe_owner.clear()
        super().close()

    @staticmethod
    def _pe_window(phb: dict[str, Any], w: dict[str, Any]) -> PeWindow:
        return PeWindow(
            phb["liobns"].index(w["liobn"]), w["liobn"], w["bus-offset"], w["size"],
            w["page-shift"], w.get("owner", "host"),
        )  # fmt: skip

    def pe_windows(self, pe: int) -> list[PeWindow]:
        p = self._phb(pe)
        return sorted((self._pe_window(p, w) for w in p["windows"]), key=lambda w: w.slot)

    def pe_create_window(self, pe: int, page_shift: int, size: int, offset: int) -> PeWindow:
        w = self.execute(
            "x-iommulab-spapr-window-create",
            self._with_owner(
                pe, {"phb": pe, "page-shift": page_shift, "size": size, "bus-offset": offset}
            ),
        )
        return self._pe_window(self._phb(pe), w)

    def _liobn(self, pe: int, slot: int) -> int:
        liobns: list[int] = self._phb(pe)["liobns"]
        if not 0 <= slot < len(liobns):
            raise BackendError(f"PHB {pe} has no TCE table {slot}")
        return liobns[slot]

    def pe_remove_window(self, pe: int, slot: int) -> None:
        self.execute(
            "x-iommulab-spapr-window-remove",
            self._with_owner(pe, {"phb": pe, "liobn": self._liobn(pe, slot)}),
        )

    def put_tces(self, pe: int, slot: int, start: int, tces: Sequence[int]) -> None:
        """One ``x-iommulab-spapr-put-tces``: the TCEs as a memfd over a UNIX socket,
        else base64 (little-endian, the lab's bulk payload format)."""
        liobn = self._liobn_cached(pe, slot)
        raw = struct.pack(f"<{len(tces)}Q", *tces)
        args: dict[str, object] = self._with_owner(pe, {"liobn": liobn, "start": start})
        if self.session.can_pass_fds and len(raw) >= FD_THRESHOLD:
            fd = memfd_from(raw)
            try:
                args.update(fd="iommulab-tces", count=len(tces))
                self.session.execute_with_fd(
                    "x-iommulab-spapr-put-tces", args, fd, fdname="iommulab-tces"
                )
            except Exception as e:
                raise BackendError(str(e)) from e
            finally:
                os.close(fd)
            return
        args["data"] = base64.b64encode(raw).decode()
        self.execute("x-iommulab-spapr-put-tces", args)

    def _liobn_cached(self, pe: int, slot: int) -> int:
        key = (pe, slot)
        if key not in self._liobns:
            self._liobns[key] = self._liobn(pe, slot)
        return self._liobns[key]

    def read_pe_tces(self, pe: int, slot: int, start: int, count: int) -> list[int]:
        p = self._phb(pe)
        liobn = self._liobn(pe, slot)
        chunk = int(p["host-windows"]["read-tces-max"])
        out: list[int] = []
        pos, end = start, start + count
        while pos < end:
            r = self.execute(
                "x-iommulab-spapr-read-tces",
                {"liobn": liobn, "start": pos, "count": min(chunk, end - pos)},
            )
            raw = base64.b64decode(r["data"])
            out.extend(struct.unpack(f">{len(raw) // 8}Q", raw))
            if not r["count"]:
                break
            pos += int(r["count"])
        return out

    def set_blocked(self, pe: int, blocked: bool) -> None:
        self.execute(
            "x-iommulab-spapr-set-blocked", self._with_owner(pe, {"phb": pe, "blocked": blocked})
        )

    def pe_blocked(self, pe: int) -> bool:
        return bool(self._phb(pe).get("blocked", False))

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
