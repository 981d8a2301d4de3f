"""The hardware backend over QMP: the iommulab-viommu device's ``x-iommulab-*`` commands.

The connection is the lab's one QMP client (:class:`pyctl.qemu.qmp.QmpSession`):
given an address the backend connects (within ``connect_timeout``) and owns
the session; given a session (a launcher's ``inst.qmp``) it shares it and
leaves it open.  Each Protocol method is one QMP command (docs/qmp.md); a map
batch too large for one QMP message is split into chunks and, should a later
chunk fail, the earlier ones are unmapped again, so a batch stays all or
nothing.  A refused command raises :class:`BackendError` with QEMU's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, cast

from pyctl.qemu.qmp import Address, ExecuteError, QmpSession

from .backend import (
    Access,
    AttachMode,
    DeviceHwInfo,
    DomainType,
    Fault,
    HwDevice,
    HwDomain,
    HwState,
    MapEntry,
    Translation,
)
from .errors import BackendError
from .hwinfo import device_hw_info

#: mappings per x-iommulab-map command (QEMU's JSON parser caps tokens per message)
MAP_CHUNK = 8192
#: QEMU events kept for :meth:`QmpBackend.events` (memory hotplug and unplug;
#: QEMU 10.0 has no DEVICE_ADDED, a device_add is seen by re-reading the RAM)
WATCHED_EVENTS = ("DEVICE_DELETED", "MEMORY_DEVICE_SIZE_CHANGE")


class QmpBackend:
    """The ``iommulab-viommu`` device ``iommu`` (qdev id or QOM path) of a running QEMU."""

    def __init__(
        self,
        address: Address | QmpSession,
        iommu: str = "viommu0",
        timeout: float = 60.0,
        map_chunk: int = MAP_CHUNK,
        connect_timeout: float = 10.0,
    ) -> None:
        if map_chunk < 1:
            raise ValueError(f"map_chunk {map_chunk} must be >= 1")
        self.map_chunk = map_chunk
        self.iommu = iommu
        self.timeout = timeout
        self._owned = not isinstance(address, QmpSession)
        self.session = (
            address
            if isinstance(address, QmpSession)
            else QmpSession.connect(address, connect_timeout, timeout, name="iommulab-pyctl")
        )
        self._events = self.session.listen(WATCHED_EVENTS)
        self._devices: dict[str, DeviceHwInfo] = {}
        self._aliases: dict[str, str] = {}
        self.commands_sent = 0

    # -- plumbing --------------------------------------------------------------
    def close(self) -> None:
        """Disconnect, if the backend made the connection (a shared session stays open)."""
        if self._owned:
            self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, command: str, args: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command; a refusal becomes :class:`BackendError`."""
        self.commands_sent += 1
        try:
            return self.session.execute(command, args, timeout=self.timeout)
        except ExecuteError as e:
            raise BackendError(f"{command}: {e}") from e

    def cmd(self, cmd: str, **args: Any) -> Any:
        """Any QMP command with keyword arguments (``guestram.QmpLike``)."""
        return self.execute(cmd, args)

    def events(self) -> list[dict[str, Any]]:
        """The watched QEMU events received since the last call, oldest first."""
        return self.session.drain(self._events)

    def _cmd(self, command: str, **args: object) -> Any:
        return self.execute(command, {"iommu": self.iommu, **args})

    # -- devices ---------------------------------------------------------------
    def _refresh_devices(self) -> None:
        """Every requester behind the vIOMMU, with the facts the device reports
        for it (``x-iommulab-query-hw-info``: the lab's IOMMU_GET_HW_INFO)."""
        info = self._cmd("x-iommulab-query", mappings=False)
        devices: dict[str, DeviceHwInfo] = {}
        aliases: dict[str, str] = {}
        for d in info["devices"]:
            path = d["device"]
            answer = self.execute("x-iommulab-query-hw-info", {"device": path})
            try:
                devices[path] = device_hw_info(answer, path)
            except ValueError as e:
                raise BackendError(f"{path}: {e}") from e
            aliases[path] = path
            if "id" in d:
                aliases[d["id"]] = path
        self._devices, self._aliases = devices, aliases

    def devices(self) -> list[DeviceHwInfo]:
        self._refresh_devices()
        return list(self._devices.values())

    def device_info(self, device: str) -> DeviceHwInfo:
        if device not in self._aliases:
            self._refresh_devices()
        path = self._aliases.get(device)
        if path is None:
            raise BackendError(f"device {device!r} is not behind {self.iommu}")
        return self._devices[path]

    # -- HardwareBackend -------------------------------------------------------
    def domain_alloc(
        self,
        domain: int,
        type: DomainType,
        *,
        parent: int | None = None,
        s1_root: int | None = None,
        ias: int | None = None,
    ) -> None:
        args: dict[str, object] = {"domain": domain, "type": type}
        if parent is not None:
            args["parent"] = parent
        if s1_root is not None:
            args["s1-root"] = s1_root
        if ias is not None:
            args["ias"] = ias
        self._cmd("x-iommulab-domain-alloc", **args)

    def domain_free(self, domain: int) -> None:
        self._cmd("x-iommulab-domain-free", domain=domain)

    @staticmethod
    def _mapping(m: MapEntry) -> dict[str, object]:
        return {"iova": m.iova, "size": m.size, "addr": m.addr, "read": m.read, "write": m.write}

    def map(self, domain: int, mappings: list[MapEntry]) -> None:
        done: list[MapEntry] = []
        for i in range(0, len(mappings), self.map_chunk):
            chunk = mappings[i : i + self.map_chunk]
            try:
                self._cmd(
                    "x-iommulab-map", domain=domain, mappings=[self._mapping(m) for m in chunk]
                )
            except BackendError:
                if done:
                    self.unmap(domain, [(m.iova, m.size) for m in done])
                raise
            done.extend(chunk)

    def unmap(self, domain: int, ranges: list[tuple[int, int]]) -> int:
        total = 0
        for i in range(0, len(ranges), self.map_chunk):
            chunk = ranges[i : i + self.map_chunk]
            r = self._cmd(
                "x-iommulab-unmap",
                domain=domain,
                ranges=[{"iova": iova, "size": size} for iova, size in chunk],
            )
            total += int(r["unmapped"])
        return total

    def attach(self, device: str, mode: AttachMode, domain: int | None = None) -> None:
        args: dict[str, object] = {"device": device, "mode": mode}
        if domain is not None:
            args["domain"] = domain
        self._cmd("x-iommulab-attach", **args)

    def invalidate(
        self, domain: int | None = None, iova: int | None = None, size: int | None = None
    ) -> None:
        args: dict[str, object] = {}
        if domain is not None:
            args["domain"] = domain
        if iova is not None:
            args["iova"] = iova
        if size is not None:
            args["size"] = size
        self._cmd("x-iommulab-invalidate", **args)

    def _mappings(self, domain: int) -> tuple[MapEntry, ...]:
        """All of ``domain``'s mappings, a page (QUERY_MAX_MAPPINGS) per command from the
        last page's ``next``: each answer stays a few MB whatever the domain holds."""
        out: list[MapEntry] = []
        start = 0
        while True:
            [d] = self._cmd("x-iommulab-query", domain=domain, start=start)["domains"]
            out.extend(
                MapEntry(m["iova"], m["size"], m["addr"], m["read"], m["write"])
                for m in d["mappings"]
            )
            if "next" not in d:
                return tuple(out)
            start = d["next"]

    def query(self) -> HwState:
        """The domains (listed without mappings) and each paging domain's mappings, paged."""
        info = self._cmd("x-iommulab-query", mappings=False)
        doms = tuple(
            HwDomain(
                domain=d["domain"],
                type=d["type"],
                ias=d["ias"],
                parent=d.get("parent"),
                s1_root=d.get("s1-root"),
                devices=d["devices"],
                children=d["children"],
                mappings=self._mappings(d["domain"]) if d["type"] == "paging" else (),
            )
            for d in info["domains"]
        )
        devs = tuple(
            sorted(
                (HwDevice(d["device"], d["mode"], d.get("domain")) for d in info["devices"]),
                key=lambda d: d.device,
            )
        )
        return HwState(doms, devs)

    def translate(self, device: str, iova: int, access: Access) -> Translation:
        r = self._cmd("x-iommulab-translate", device=device, iova=iova, access=access)
        return Translation(
            allowed=r["allowed"],
            addr=r.get("addr"),
            read=r.get("read", False),
            write=r.get("write", False),
            stage=r.get("stage"),
            reason=r.get("reason"),
        )

    def faults(self, clear: bool = False) -> list[Fault]:
        r = self._cmd("x-iommulab-query-faults", clear=clear)
        return [
            Fault(
                f["device"],
                f["iova"],
                cast(Access, f["access"]),
                f["stage"],
                f["reason"],
                f.get("domain"),
            )
            for f in r["faults"]
        ]

    def counters(self) -> dict[str, int]:
        return dict(self._cmd("x-iommulab-query-counters"))
