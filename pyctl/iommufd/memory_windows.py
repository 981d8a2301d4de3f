"""The sPAPR DMA windows of the in-memory hardware (``WindowBackend``).

Each sPAPR device starts with the default 32-bit window; the host side
creates and removes windows within :data:`DEFAULT_SPAPR_CAPS` (or the caps the
backend was given), and the guest's RTAS calls (create, reset, remove) change
them too and raise a :class:`~pyctl.iommufd.backend.WindowEvent` for the host
to collect.  :class:`InMemoryWindows` is a part of
:class:`~pyctl.iommufd.memory_backend.InMemoryBackend`, as
:class:`~pyctl.iommufd.ppc64_hw.InMemoryPes` is: the backend owns the device
list and the failure injection, this class the windows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import DeviceHwInfo, Window, WindowCaps, WindowEvent
from .errors import BackendError

DEFAULT_SPAPR_CAPS = WindowCaps(
    windows_supported=2,
    page_shifts=(12, 16, 21, 24),
    ddw_offset=1 << 59,
    max_size=1 << 40,
)
#: the default 32-bit window every sPAPR PE starts with (index 0, 4 KiB TCEs)
DEFAULT_SPAPR_WINDOW = Window(index=0, start=0, size=1 << 30, page_shift=12)


class InMemoryWindows:
    """Per sPAPR device: its DMA windows by index, and the guest's window events."""

    spapr_caps: WindowCaps

    if TYPE_CHECKING:  # InMemoryBackend's: the device list and fail_next

        def _dev(self, device: str) -> DeviceHwInfo: ...

        def _enter(self, name: str) -> None: ...

    def _windows_init(self) -> None:
        self._windows: dict[str, dict[int, Window]] = {}
        self._events: list[WindowEvent] = []

    def _add_window_device(self, device: str) -> None:
        self._windows[device] = {0: DEFAULT_SPAPR_WINDOW}

    def _in_window(self, device: str, iova: int) -> bool:
        """Does a window of (sPAPR) ``device`` hold ``iova``?"""
        return any(w.start <= iova <= w.last for w in self._windows[device].values())

    def _spapr(self, device: str) -> dict[int, Window]:
        info = self._dev(device)
        if info.platform != "spapr":
            raise BackendError(f"device {device!r} has no sPAPR DMA windows")
        return self._windows[device]

    def window_caps(self, device: str) -> WindowCaps:
        self._spapr(device)
        return self.spapr_caps

    def windows(self, device: str) -> list[Window]:
        return sorted(self._spapr(device).values(), key=lambda w: w.index)

    def create_window(self, device: str, page_shift: int, size: int, offset: int) -> Window:
        self._enter("create_window")
        wins = self._spapr(device)
        caps = self.spapr_caps
        if page_shift not in caps.page_shifts:
            raise BackendError(f"page shift {page_shift} not supported")
        if size <= 0 or size & (size - 1) or size < (1 << page_shift) or size > caps.max_size:
            raise BackendError(f"window size {size:#x} invalid")
        if offset % (1 << page_shift) or offset + size > 1 << 64:
            raise BackendError(f"window offset {offset:#x} invalid")
        free = [i for i in range(caps.windows_supported) if i not in wins]
        if not free:
            raise BackendError("no free window")
        for w in wins.values():
            if offset <= w.last and w.start <= offset + size - 1:
                raise BackendError(f"window overlaps window {w.index}")
        win = Window(free[0], offset, size, page_shift)
        wins[win.index] = win
        return win

    def remove_window(self, device: str, index: int) -> None:
        self._enter("remove_window")
        wins = self._spapr(device)
        if index not in wins:
            raise BackendError(f"window {index} does not exist")
        del wins[index]

    def window_events(self) -> list[WindowEvent]:
        out, self._events = self._events, []
        return out

    def guest_create_window(self, device: str, page_shift: int, size: int, offset: int) -> Window:
        """The guest's RTAS ibm,create-pe-dma-window: changes the PE and raises an event."""
        win = self.create_window(device, page_shift, size, offset)
        self._events.append(WindowEvent(device, "created", win))
        return win

    def guest_reset_windows(self, device: str) -> None:
        """The guest's ibm,reset-pe-dma-window: only the default window remains."""
        wins = self._spapr(device)
        wins.clear()
        wins[0] = DEFAULT_SPAPR_WINDOW
        self._events.append(WindowEvent(device, "reset", DEFAULT_SPAPR_WINDOW))

    def guest_remove_window(self, device: str, index: int) -> None:
        wins = self._spapr(device)
        win = wins.get(index)
        self.remove_window(device, index)
        if win is not None:
            self._events.append(WindowEvent(device, "removed", win))


__all__ = ["DEFAULT_SPAPR_CAPS", "DEFAULT_SPAPR_WINDOW", "InMemoryWindows"]
