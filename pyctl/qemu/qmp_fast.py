"""The synchronous fast path of :meth:`pyctl.qemu.qmp.QmpSession.execute`.

Between commands nobody reads the QMP socket (the asyncio loop runs only
during a call).  So when nothing is pending and qemu.qmp's reader holds no
unread bytes, a command can be written to the socket and its answer read
from it directly, without the loop, its tasks and qemu.qmp's message layers:
about 300 Python calls a command less (scripts/bench-qmp.py, section 1).
Anything unexpected (an event before the answer, a short write, bytes after
it, a timeout, end of file) hands over to qemu.qmp: what was read is fed to
its reader and the answer is awaited the usual way, so events and errors
are seen exactly as on the slow path.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from qemu.qmp import ExecuteError, Message, QMPClient
from qemu.qmp.models import ErrorResponse

#: the command was not sent: take the slow path from the start
NOT_SENT = "not-sent"
#: sent, the answer is to be awaited through qemu.qmp (pending under the id)
SENT = "sent"
#: answered: the value is the result
DONE = "done"


def execute(
    client: QMPClient,
    command: str,
    args: Mapping[str, object] | None,
    timeout: float | None,
    fd: int | None = None,
) -> tuple[str, Any]:
    """(DONE, result), (SENT, (id, message)) or (NOT_SENT, None); ExecuteError if refused.
    ``fd`` goes with the command's bytes (SCM_RIGHTS), for getfd: in one read QEMU has both
    (sent ahead on its own, the fd costs the monitor another pass, ~0.2 ms)."""
    reader, writer = client._reader, client._writer
    if (
        reader is None
        or writer is None
        or client._pending
        or len(reader._buffer)  # type: ignore[attr-defined]  # unread bytes: keep the order
        or reader.at_eof()
        or writer.transport.get_write_buffer_size()
        or writer.transport.is_closing()
        or client.runstate.name != "RUNNING"
    ):
        return NOT_SENT, None
    sock = writer.transport.get_extra_info("socket")
    msg_id = client._get_exec_id()
    body: dict[str, object] = {"execute": command}
    if args is not None:
        body["arguments"] = dict(args)
    body["id"] = msg_id
    msg = Message(body, eager=False)
    raw = json.dumps(body).encode() + b"\n"
    client._pending[msg_id] = asyncio.Queue(maxsize=1)
    try:
        if fd is None:
            sent = os.write(sock.fileno(), raw)
        else:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("@i", fd))]
            sent = sock._sock.sendmsg([raw], rights)  # as qemu.qmp's send_fd_scm
    except BlockingIOError:
        if fd is not None:
            del client._pending[msg_id]
            return NOT_SENT, None
        sent = 0
    except OSError:
        del client._pending[msg_id]
        return NOT_SENT, None  # the slow path reports the broken connection
    if sent < len(raw):
        writer.write(raw[sent:])  # the loop writes the rest
        return SENT, (msg_id, msg)
    line, rest = _read_line(sock.fileno(), timeout)
    if line is not None and not rest:
        reply = json.loads(line)
        if isinstance(reply, dict) and reply.get("id") == msg_id:
            del client._pending[msg_id]
            if "error" in reply:
                raise ExecuteError(ErrorResponse(reply), msg, Message(reply, eager=False))
            if "return" in reply:
                return DONE, reply["return"]
            client._pending[msg_id] = asyncio.Queue(maxsize=1)  # odd: let qemu.qmp judge
    # hand over to qemu.qmp with everything read, in order
    if line is None and rest is None:
        reader.feed_eof()
    else:
        reader.feed_data((line + b"\n" if line is not None else b"") + (rest or b""))
    return SENT, (msg_id, msg)


def _read_line(fd: int, timeout: float | None) -> tuple[bytes | None, bytes | None]:
    """The first line from ``fd`` and what came after it; (None, bytes read) on a timeout,
    (None, None) at end of file."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = bytearray()  # answers of megabytes: no quadratic copying
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
        if not poller.poll(wait):
            return None, bytes(buf)
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if not chunk:
            return (None, bytes(buf)) if buf else (None, None)
        buf += chunk
        if b"\n" in chunk:
            line, _, rest = bytes(buf).partition(b"\n")
            return line, rest
