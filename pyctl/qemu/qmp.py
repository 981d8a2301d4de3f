"""The one QMP client of the lab: a synchronous facade over qemu.qmp's ``QMPClient``.

Every part of pyctl that talks QMP (the launcher, the qtest machine, the
hardware backends, the CLI, the demo, the benchmarks) goes through
:class:`QmpSession`.  It connects to a UNIX socket path, a ``(host, port)``
pair or an already connected socket (one end of a socket pair handed to
QEMU), always within ``connect_timeout``: a socket whose monitor is busy
with another client accepts the connection but never greets, and that must
end in an error, not a hang.

The asyncio loop runs in the caller's thread, only while a call is in
progress (as ``qemu.qmp.legacy`` does): no thread hop per command, so a
trivial command costs one socket round trip plus the JSON work.  Events
that arrive meanwhile are kept by listeners (:meth:`QmpSession.listen`).
A refused command raises qemu.qmp's ``ExecuteError`` (QEMU's class and
message); a connection that cannot be made or that breaks raises
:class:`QmpError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from qemu.qmp import ConnectError, EventListener, ExecuteError, Message, QMPClient, QMPError
from qemu.qmp.models import ErrorResponse
from qemu.qmp.qmp_client import BadReplyError, GreetingError

from . import qmp_fast

__all__ = [
    "READ_LIMIT",
    "Address",
    "ExecuteError",
    "QmpError",
    "QmpSession",
    "QmpTimeout",
    "memfd_from",
    "parse_address",
]

T = TypeVar("T")
#: a UNIX socket path, (host, port), or a connected socket
Address = str | tuple[str, int] | socket.socket

#: seconds to connect and be greeted; a monitor that already has a client never greets
CONNECT_TIMEOUT = 10.0

# The read buffer: qemu.qmp drops the connection on an answer longer than its
# read limit (10 MiB by default), so the limit is sized to the largest answer
# the lab sends.  Bulk answers are paged in the device (docs/reliability.md
# "Answers of any size"); the two largest pages are:
#: TCEs one x-iommulab-spapr-read-tces returns at most (IL_SPAPR_READ_MAX, host-windows'
#: read-tces-max): 8 bytes each, in base64: 4 * ceil(2^23 / 3) = 11,184,812 bytes
READ_TCES_MAX = 1 << 20
#: mappings one x-iommulab-query carries at most (IOMMULAB_QUERY_MAX_MAPPINGS): at most
#: 123 JSON bytes each (three 20-digit numbers, two false), 8,060,928 bytes, plus at most
#: 4,096 domains (IL_MAX_DOMAINS) of at most 201 bytes, 823,296: 8,884,224 bytes
QUERY_MAX_MAPPINGS = 1 << 16
_TCE_PAGE = 4 * -(-READ_TCES_MAX * 8 // 3)
_QUERY_PAGE = QUERY_MAX_MAPPINGS * 123 + 4096 * 201
#: the envelope, the device list and paths of a query, a fault queue (256 records by
#: default): 4 MiB more than the largest page, rounded up to MiB: 15 MiB
READ_LIMIT = -(-(max(_TCE_PAGE, _QUERY_PAGE) + (4 << 20)) // (1 << 20)) << 20


def _return_of(reply: Message, msg: Message) -> object:
    """A reply's "return", or the error qemu.qmp's execute() would raise."""
    if "error" in reply:
        raise ExecuteError(ErrorResponse(reply), msg, reply)
    if "return" not in reply:
        raise BadReplyError("QMP reply is missing 'error' or 'return'", reply, msg)
    return reply["return"]


def _lazy_message(cmd: str, arguments: Mapping[str, object] | None, oob: bool = False) -> Message:
    """An execute message encoded only when sent."""
    body: dict[str, object] = {"exec-oob" if oob else "execute": cmd}
    if arguments is not None:
        body["arguments"] = arguments
    return Message(body, eager=False)


class _Client(QMPClient):
    """QMPClient, cheaper per command (qemu.qmp is pinned, 0.0.6): no debug string of
    every message (a JSON dump) unless the debug log is on, and a command is written
    by the caller instead of being queued for the writer task (one loop turn less;
    the sync facade never has two commands in flight).  About 40 us of 240."""

    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("--> %s", msg)
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("<-- %s", msg)
        return msg

    async def execute(
        self, cmd: str, arguments: Mapping[str, object] | None = None, oob: bool = False
    ) -> object:
        # one JSON encoding per command: qemu.qmp's execute() encodes three times (an
        # eager Message, its copy, the send), which triples the cost of a large command
        msg = _lazy_message(cmd, arguments, oob)
        return _return_of(await self._execute(msg), msg)

    async def reply_of(self, msg_id: str, msg: Message) -> object:
        """The answer to ``msg``, sent already under ``msg_id`` (see qmp_fast)."""
        return _return_of(await self._reply(msg_id), msg)

    async def _issue(self, msg: Message) -> str | None:
        # write at once instead of waking the writer task: one loop turn less
        raw_id = msg.get("id")
        msg_id = raw_id if isinstance(raw_id, str) else None
        self._pending[msg_id] = asyncio.Queue(maxsize=1)
        try:
            await self._send(msg)
        except BaseException:
            del self._pending[msg_id]
            raise
        return msg_id


@dataclass
class Submitted:
    """Commands sent by :meth:`QmpSession.submit_with_fd`, answered by ``finish``."""

    command: str
    msgs: list[Message]
    ids: list[str | None]


class QmpError(Exception):
    """The QMP connection could not be made, timed out, or broke (not a refused command)."""


class QmpTimeout(QmpError):
    """No answer within the timeout."""


def parse_address(text: str) -> str | tuple[str, int]:
    """``HOST:PORT`` is TCP, anything else a UNIX socket path."""
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit() and "/" not in text:
        return (host, int(port))
    return text


def memfd_from(data: bytes | memoryview, name: str = "iommulab-payload") -> int:
    """A sealed memfd holding ``data`` from offset 0 (a bulk payload for ``fd`` arguments,
    docs/qmp.md "Bulk payloads"); the caller closes it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        # QEMU reads exactly what it was told: nobody may change it any more
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def _describe(address: Address) -> str:
    if isinstance(address, socket.socket):
        return "QEMU's monitor socket"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return address


def _reason(exc: BaseException) -> str:
    """The most specific message of a qemu.qmp error chain (its own are often generic)."""
    inner = exc.exc if isinstance(exc, ConnectError) else exc.__cause__
    if inner is not None and str(inner):
        return _reason(inner) if isinstance(inner, QMPError) else str(inner)
    return str(exc) or type(exc).__name__


class QmpSession:
    """One negotiated QMP connection (``with QmpSession.connect(path) as qmp: qmp.cmd(...)``).

    ``timeout`` bounds each command (None: no bound).  Not thread-safe: use a
    session from the thread that made it.
    """

    def __init__(self, name: str = "iommulab", timeout: float | None = 60.0) -> None:
        self.timeout = timeout
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._client = _Client(name, READ_LIMIT)
        self._all = EventListener()
        self._client.register_listener(self._all)
        self.address = ""

    @classmethod
    def connect(
        cls,
        address: Address,
        connect_timeout: float = CONNECT_TIMEOUT,
        timeout: float | None = 60.0,
        name: str = "iommulab",
    ) -> Self:
        """Connect, read the greeting, negotiate: all within ``connect_timeout``."""
        session = cls(name, timeout)
        try:
            session._open(address, connect_timeout)
        except BaseException:
            session._loop.close()
            raise
        return session

    def _open(self, address: Address, connect_timeout: float) -> None:
        self.address = _describe(address)
        # A path monitor that QEMU wrote an event to before its first client
        # connected sends that event ahead of the greeting (QEMU's monitor
        # starts un-negotiated only once a client opens it); the greeting
        # follows, and a second connection gets a clean one.
        attempts = 1 if isinstance(address, socket.socket) else 2
        for attempt in range(attempts):
            try:
                self._wait(self._client.connect(address), connect_timeout, "connect")
                return
            except QmpError as exc:
                self._drop_half_open()
                last = attempt + 1 == attempts
                if last or not isinstance(exc.__cause__, ConnectError):
                    raise
                if not isinstance(exc.__cause__.exc, GreetingError):
                    raise

    def _wait(self, aw: Awaitable[T], timeout: float | None, what: str) -> T:
        async def bounded() -> T:
            if timeout is None:
                return await aw
            async with asyncio.timeout(timeout):
                return await aw

        try:
            return self._loop.run_until_complete(bounded())
        except TimeoutError:
            if what == "connect":
                raise QmpTimeout(
                    f"no QMP greeting from {self.address} within {timeout:g}s "
                    "(is another client connected to this monitor?)"
                ) from None
            raise QmpTimeout(f"{what}: no answer from QEMU within {timeout:g}s") from None
        except ExecuteError:
            raise
        except (QMPError, OSError, EOFError) as exc:
            if what == "connect":
                raise QmpError(f"cannot connect to QMP at {self.address}: {_reason(exc)}") from exc
            raise QmpError(f"{what}: QMP connection lost: {_reason(exc)}") from exc

    def _drop_half_open(self) -> None:
        """Drop a half-made connection (the client goes back to IDLE)."""
        with contextlib.suppress(Exception):  # the error that matters is the caller's
            self._loop.run_until_complete(self._client.disconnect())

    # -- commands ---------------------------------------------------------------
    def execute(
        self, command: str, args: Mapping[str, object] | None = None, timeout: float | None = -1.0
    ) -> Any:
        """Run one command; ``ExecuteError`` if QEMU refuses it."""
        t = self.timeout if timeout == -1.0 else timeout
        state, value = qmp_fast.execute(self._client, command, args or None, t)
        if state == qmp_fast.DONE:
            return value
        if state == qmp_fast.SENT:
            return self._wait(self._client.reply_of(*value), t, command)
        return self._wait(self._client.execute(command, dict(args) if args else None), t, command)

    def cmd(self, cmd: str, **args: Any) -> Any:
        """:meth:`execute` with keyword arguments (QMP names, dashes as in the schema)."""
        return self.execute(cmd, args)

    # -- file descriptors ---------------------------------------------------------
    @property
    def can_pass_fds(self) -> bool:
        """Whether file descriptors can go to QEMU over this connection (a UNIX socket)."""
        writer = self._client._writer  # qemu.qmp keeps its transport there
        if writer is None:
            return False
        sock = writer.transport.get_extra_info("socket")
        return sock is not None and sock.family == socket.AF_UNIX

    def execute_with_fd(
        self,
        command: str,
        args: Mapping[str, object],
        fd: int,
        fdname: str = "iommulab-payload",
        timeout: float | None = -1.0,
    ) -> Any:
        """Pass ``fd`` (SCM_RIGHTS) to QEMU as ``fdname`` with ``getfd``, then run ``command``
        (whose arguments name it).  The caller keeps and closes its own copy of ``fd``."""
        self._pass_fd(fd, fdname)
        return self.execute(command, args, timeout)

    def submit_with_fd(
        self, command: str, args: Mapping[str, object], fd: int, fdname: str = "iommulab-payload"
    ) -> Submitted:
        """:meth:`execute_with_fd` without waiting for ``command``: the caller may work (pack
        the next payload) while QEMU runs it, then :meth:`finish` it.  Only one may be in
        flight: a second fd sent before QEMU took the first would replace it."""
        self._pass_fd(fd, fdname)
        msgs = [_lazy_message(command, args)]
        ids = self._wait(self._issue_all(msgs), self.timeout, command)
        return Submitted(command, msgs, ids)

    def _pass_fd(self, fd: int, fdname: str) -> None:
        # the fd rides on getfd's own bytes (qmp_fast); else sent ahead of it, as qemu.qmp does
        t = self.timeout
        state, value = qmp_fast.execute(self._client, "getfd", {"fdname": fdname}, t, fd)
        if state == qmp_fast.DONE:
            return
        if state == qmp_fast.SENT:
            self._wait(self._client.reply_of(*value), t, "getfd")
            return
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise QmpError(f"getfd: cannot pass the fd: {_reason(exc)}") from exc
        self._wait(self._client.execute("getfd", {"fdname": fdname}), t, "getfd")

    def finish(self, sub: Submitted, timeout: float | None = -1.0) -> Any:
        """The answer of a :meth:`submit_with_fd` command (``ExecuteError`` if refused)."""
        t = self.timeout if timeout == -1.0 else timeout
        return self._wait(self._replies(sub), t, sub.command)[-1]

    async def _issue_all(self, msgs: list[Message]) -> list[str | None]:
        client = self._client
        ids = []
        for msg in msgs:
            msg["id"] = client._get_exec_id()  # qemu.qmp's own id scheme
            ids.append(await client._issue(msg))
        return ids

    async def _replies(self, sub: Submitted) -> list[object]:
        replies = [await self._client._reply(i) for i in sub.ids]
        for msg, reply in zip(sub.msgs, replies, strict=True):
            if "error" in reply:
                raise ExecuteError(ErrorResponse(reply), msg, reply)
        return [reply["return"] for reply in replies]

    # -- events -----------------------------------------------------------------
    def listen(self, names: Iterable[str] = ()) -> EventListener:
        """A new listener that keeps, from now on, the events named (all if none);
        drain it with :meth:`drain`."""
        listener = EventListener(tuple(names) or None)
        self._client.register_listener(listener)
        return listener

    def drain(self, listener: EventListener) -> list[dict[str, Any]]:
        """The events ``listener`` kept, oldest first, after reading what QEMU sent."""
        self._pump()
        return [dict(m) for m in listener.clear()]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """All events received since the last call (only ``name`` if given; the others
        are dropped), oldest first."""
        return [e for e in self.drain(self._all) if name is None or e["event"] == name]

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event ``name`` (one already received counts); QmpTimeout if none comes."""

        async def first() -> dict[str, Any]:
            while True:
                ev = await self._all.get()
                if ev["event"] == name:
                    return dict(ev)

        return self._wait(first(), timeout, f"event {name}")

    def _pump(self) -> None:
        """Let the reader take what is already in the socket (a few loop turns, no wait)."""

        async def turns() -> None:
            for _ in range(4):
                await asyncio.sleep(0)

        self._loop.run_until_complete(turns())

    # -- lifetime ---------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return str(self._client.runstate.name) == "RUNNING"

    def close(self) -> None:
        """Disconnect (an EOF from a QEMU that already quit is not an error)."""
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(self._client.disconnect())
        except (QMPError, OSError, EOFError):
            pass
        finally:
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
