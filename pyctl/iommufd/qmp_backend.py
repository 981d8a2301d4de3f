"""The hardware backend over QMP: the iommulab-viommu device's ``x-iommulab-*`` commands.

The connection is the lab's one QMP client (:class:`pyctl.qemu.qmp.QmpSession`):
given an address the backend connects (within ``connect_timeout``) and owns
the session; given a session (a launcher's ``inst.qmp``) it shares it and
leaves it open.  Each Protocol method is one QMP command (docs/qmp.md); a map
batch too large for one command is split into chunks and, should a later
chunk fail, the earlier ones are unmapped again, so a batch stays all or
nothing.  A refused command raises :class:`BackendError` with QEMU's message.

Bulk ranges (map, unmap) go the fastest way the connection allows
(docs/qmp.md "Bulk payloads"): packed records in a memfd passed over a UNIX
socket, else packed records in base64, else JSON lists (``payload``).

A control plane owns the vIOMMU (docs/qmp.md "Ownership"): :meth:`QmpBackend.claim`
takes it (an :class:`~pyctl.iommufd.context.IommufdContext` does on creation),
the state-changing commands then carry the backend's token, and :meth:`close`
releases it.  Another live owner makes the claim fail with QEMU's error naming
it; one whose connection is closed (a killed control plane) is taken over.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import socket
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self, TypeVar, cast

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
from .qmp_bulk import (
    MAP_CHUNK,
    PACKED_CHUNK,
    READ,
    SMALL_BATCH,
    WRITE,
    BulkSender,
    Payload,
    Words,
    map_words,
    page_words,
    range_words,
)

T = TypeVar("T")

#: the commands that change a vIOMMU's state: they carry the owner's token
CHANGING = frozenset(
    {
        "x-iommulab-domain-alloc",
        "x-iommulab-domain-free",
        "x-iommulab-map",
        "x-iommulab-unmap",
        "x-iommulab-attach",
        "x-iommulab-invalidate",
    }
)
#: reads of the state retried when it changes under them (x-iommulab-query generation)
QUERY_ATTEMPTS = 5
_tokens = itertools.count(1)


def owner_token() -> str:
    """A token that says who owns the device (it names the owner in QEMU's errors)."""
    return f"pyctl pid {os.getpid()}#{next(_tokens)} on {socket.gethostname()}"[:64]


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
        map_chunk: int | None = None,
        connect_timeout: float = 10.0,
        payload: Payload = "auto",
    ) -> None:
        if map_chunk is not None and map_chunk < 1:
            raise ValueError(f"map_chunk {map_chunk} must be >= 1")
        #: ranges per command (None: MAP_CHUNK inline, PACKED_CHUNK packed)
        self.map_chunk = map_chunk
        self.payload: Payload = payload
        self._max_batch: int | None = None
        #: the token this backend owns the vIOMMU with (None: not claimed)
        self.owner: str | None = None
        #: the token of the gone owner :meth:`claim` took the device over from
        self.took_over_from: str | None = None
        self.iommu = iommu
        self.timeout = timeout
        self._owned = not isinstance(address, QmpSession)
        self.session = (
            address
            if isinstance(address, QmpSession)
            else QmpSession.connect(address, connect_timeout, timeout, name="iommulab-pyctl")
        )
        self._events = self.session.listen(WATCHED_EVENTS)
        self._sender = BulkSender(self.session, self.execute, self._count, timeout)
        self._devices: dict[str, DeviceHwInfo] = {}
        self._aliases: dict[str, str] = {}
        self.commands_sent = 0

    # -- plumbing --------------------------------------------------------------
    def close(self) -> None:
        """Release the vIOMMU if claimed; disconnect, if the backend made the connection
        (a shared session stays open)."""
        if self.owner is not None and self.session.connected:
            with contextlib.suppress(BackendError):  # taken over meanwhile: not ours
                self.release()
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
        if self.owner is not None and command in CHANGING:
            args["owner"] = self.owner
        return self.execute(command, {"iommu": self.iommu, **args})

    # -- ownership -------------------------------------------------------------
    def claim(self) -> None:
        """Own the vIOMMU (idempotent).  Fails with :class:`BackendError` naming the
        owner while another control plane's connection is open; takes the device over
        from one whose connection is closed (``took_over_from``).  A QEMU without the
        device has nothing to own (its commands fail on their own)."""
        token = self.owner or owner_token()
        args = {"device": self.iommu, "owner": token}
        try:
            before = self.execute("x-iommulab-query-owner", {"device": self.iommu})
        except BackendError as e:
            if "is not an iommulab vIOMMU" in str(e) or "give its id" in str(e):
                return
            raise
        gone = before.get("owner") not in (None, token) and not before["connected"]
        self.execute("x-iommulab-owner-claim", {**args, "force": gone})
        self.owner = token
        if gone:
            self.took_over_from = before["owner"]

    def release(self) -> None:
        """Give the vIOMMU up (it is open to all again)."""
        if self.owner is not None:
            token, self.owner = self.owner, None
            self.execute("x-iommulab-owner-release", {"device": self.iommu, "owner": token})

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
            self._max_batch = answer.get("limits", {}).get("max-batch", self._max_batch)
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

    def payload_mode(self, n: int = PACKED_CHUNK) -> Payload:
        """How ``n`` ranges go now: ``payload``, or for "auto" JSON if at most SMALL_BATCH,
        else fd on a UNIX socket, else base64."""
        if self.payload != "auto":
            return self.payload
        if n <= SMALL_BATCH:
            return "inline"
        return "fd" if self.session.can_pass_fds else "base64"

    def _chunk(self, mode: Payload) -> int:
        if mode == "inline":
            return self.map_chunk or MAP_CHUNK
        if self._max_batch is None:
            limits = self.execute("x-iommulab-query-hw-info", {"device": self.iommu})["limits"]
            self._max_batch = int(limits["max-batch"])
        return min(self.map_chunk or PACKED_CHUNK, self._max_batch)

    def _bulk(
        self,
        command: str,
        domain: int,
        key: str,
        items: Sequence[T],
        words: Callable[[Sequence[T]], Words],
        to_json: Callable[[T], dict[str, object]],
        done: Callable[[Sequence[T], Any], None],
    ) -> None:
        """``command`` over ``items`` in chunks, each as :meth:`payload_mode` says."""
        mode = self.payload_mode(len(items))
        args: dict[str, object] = {"iommu": self.iommu, "domain": domain}
        if self.owner is not None:
            args["owner"] = self.owner
        self._sender.run(mode, command, args, key, items, self._chunk(mode), words, to_json, done)

    def _count(self) -> None:
        self.commands_sent += 1

    def map(self, domain: int, mappings: list[MapEntry]) -> None:
        done: list[MapEntry] = []
        try:
            self._bulk(
                "x-iommulab-map",
                domain,
                "mappings",
                mappings,
                map_words,
                self._mapping,
                lambda part, _: done.extend(part),
            )
        except BackendError:
            if done:
                self.unmap(domain, [(m.iova, m.size) for m in done])
            raise

    def unmap(self, domain: int, ranges: list[tuple[int, int]]) -> int:
        total = [0]

        def add(_: object, r: Any) -> None:
            total[0] += int(r["unmapped"])

        self._bulk(
            "x-iommulab-unmap",
            domain,
            "ranges",
            ranges,
            range_words,
            lambda r: {"iova": r[0], "size": r[1]},
            add,
        )
        return total[0]

    def map_pages(
        self,
        domain: int,
        iova: int,
        addr: int,
        size: int,
        read: bool = True,
        write: bool = True,
        page: int = 4096,
    ) -> None:
        """Map [iova, iova + size) to addr as one mapping per ``page`` (no blocks: what a
        VMM that maps guest RAM page by page asks), packed without an object per page; all
        or nothing like :meth:`map`."""
        if size % page or iova % page or addr % page:
            raise BackendError(f"map_pages: iova, addr and size must be multiples of {page}")
        flags = (READ if read else 0) | (WRITE if write else 0)
        done: list[range] = []
        try:
            self._bulk(
                "x-iommulab-map",
                domain,
                "mappings",
                range(size // page),
                lambda part: page_words(cast(range, part), iova, addr, page, flags),
                lambda k: self._mapping(
                    MapEntry(iova + k * page, page, addr + k * page, read, write)
                ),
                lambda part, _: done.append(cast(range, part)),
            )
        except BackendError:
            if done:
                self.unmap(domain, [(iova + r.start * page, len(r) * page) for r in done])
            raise

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
            [d] = self._cmd("x-iommulab-query", domain=domain, start=start, packed=True)["domains"]
            w = array("Q", base64.b64decode(d["data"]))
            if sys.byteorder != "little":
                w.byteswap()
            out.extend(
                MapEntry(w[k], w[k + 1], w[k + 2], bool(w[k + 3] & 1), bool(w[k + 3] & 2))
                for k in range(0, len(w), 4)
            )
            if "next" not in d:
                return tuple(out)
            start = d["next"]

    def query(self) -> HwState:
        """The domains (listed without mappings) and each paging domain's mappings, paged;
        read again while the device's generation moved under the pages (another client
        changed it), at most QUERY_ATTEMPTS times, then :class:`BackendError` says so."""
        for _ in range(QUERY_ATTEMPTS):
            info = self._cmd("x-iommulab-query", mappings=False)
            state = self._state(info)
            after = self._cmd("x-iommulab-query", mappings=False)
            if after.get("generation") == info.get("generation"):
                return state
        raise BackendError(
            f"x-iommulab-query: {self.iommu} changed under {QUERY_ATTEMPTS} reads in a row "
            f"(another control plane is programming it; owner: {self._owner_name()})"
        )

    def _owner_name(self) -> str:
        o = self.execute("x-iommulab-query-owner", {"device": self.iommu})
        return repr(o["owner"]) if "owner" in o else "none"

    def _state(self, info: dict[str, Any]) -> HwState:
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
