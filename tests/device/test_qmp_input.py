"""QMP input over a real socket, byte by byte where it matters (hw/qemu-patches/0017).

QEMU's QMP monitor takes its input in chunks instead of one byte per main-loop
pass; these tests hold the real binary to the monitor's guarantees whatever the
chunking: a command split across many writes, many commands in one write (more
than the request queue holds), a command padded past many reads, an
out-of-band command overtaking a blocked in-band one from the same write (and
waiting behind a full queue), and clients that go away in the middle of a
command or with input still held back.

The client here is raw bytes on a second QMP monitor (a UNIX socket that
QEMU listens on), so the tests choose exactly what each write carries.  An
in-band command is held up with blkdebug reading its config from a FIFO (as
QEMU's own tests/qtest/qmp-test does): the main loop waits in open() until the
test opens the FIFO's other end, while the monitor's I/O thread goes on.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import qemu_binary

from pyctl.qemu.process import QemuProcess

TIMEOUT = 30.0
#: QEMU's QMP_REQ_QUEUE_LEN_MAX is 8 (include/monitor/monitor.h); comfortably more
MANY = 40
IOMMU = "viommu0"
PAGE = 4096


class RawQmp:
    """A QMP client that writes exactly the bytes it is given."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(path))
        self._buf = b""
        self.greeting = self.recv()

    def negotiate(self, oob: bool = False) -> None:
        args = {"enable": ["oob"]} if oob else {}
        self.send(json.dumps({"execute": "qmp_capabilities", "arguments": args}).encode())
        assert self.recv() == {"return": {}}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> dict[str, Any]:
        """The next message that is not an event."""
        while True:
            while b"\n" not in self._buf:
                chunk = self.sock.recv(65536)
                assert chunk, "QEMU closed the monitor connection"
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def nothing_pending(self, wait: float = 0.2) -> bool:
        """No answer arrives within ``wait`` seconds (an answer would be a bug; this
        can miss a late one, never invent one)."""
        ready, _, _ = select.select([self.sock], [], [], wait)
        return not ready and b"\n" not in self._buf

    def close(self) -> None:
        self.sock.close()


def cmd(name: str, id: str, **args: Any) -> bytes:
    msg: dict[str, Any] = {"execute": name, "id": id}
    if args:
        msg["arguments"] = args
    return json.dumps(msg).encode()


class Lab:
    """A paused q35 with the vIOMMU, its own QMP session and a second monitor."""

    def __init__(self, workdir: Path) -> None:
        self.monitor = workdir / "raw.sock"
        self.proc = QemuProcess(
            [
                str(qemu_binary()), "-M", "q35", "-accel", "qtest", "-nodefaults",
                "-display", "none", "-S", "-device", f"iommulab-viommu,id={IOMMU}",
            ],
            workdir / "qemu",
            monitor_path=self.monitor,
        ).start()  # fmt: skip
        self.fifo = workdir / "blkdebug.conf"
        os.mkfifo(self.fifo)

    def connect(self, oob: bool = False) -> RawQmp:
        c = RawQmp(self.monitor)
        c.negotiate(oob)
        return c

    def blocking_cmd(self, id: str) -> bytes:
        """blockdev-add that waits in open() of the FIFO until :meth:`unblock`."""
        return cmd(
            "blockdev-add",
            id,
            driver="blkdebug",
            **{"node-name": id, "config": str(self.fifo)},
            image={"driver": "null-co", "read-zeroes": True},
        )

    def unblock(self) -> None:
        os.close(os.open(self.fifo, os.O_WRONLY))  # waits for QEMU's open() for reading

    def alive(self) -> None:
        assert self.proc.qmp.cmd("query-status")["status"] == "prelaunch"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.proc.shutdown()


def test_command_split_across_many_writes(lab: Lab) -> None:
    c = lab.connect()
    msg = cmd("query-status", "split") + b"\n"
    for i, byte in enumerate(msg):
        c.send(bytes([byte]))
        if i % 8 == 0:
            time.sleep(0.002)  # let QEMU read the pieces one by one
        if i == len(msg) // 2:
            assert c.nothing_pending()  # half a command is no command
    assert c.recv() == {"return": {"running": False, "status": "prelaunch"}, "id": "split"}
    # the parser is back at a message boundary: the next command stands alone
    c.send(cmd("query-name", "after"))
    assert c.recv() == {"return": {}, "id": "after"}


def test_many_commands_in_one_write(lab: Lab) -> None:
    """More commands in one write than QEMU may queue: all answered, in order, and the
    lab's commands in the batch take effect in order (map, then query)."""
    c = lab.connect()
    batch = [cmd("x-iommulab-domain-alloc", "alloc", iommu=IOMMU, domain=1, type="paging")]
    for i in range(MANY):
        mapping = {"iova": 2 * i * PAGE, "size": PAGE, "addr": i * PAGE}
        mapping |= {"read": True, "write": i % 2 == 0}
        batch.append(cmd("x-iommulab-map", f"map-{i}", iommu=IOMMU, domain=1, mappings=[mapping]))
        batch.append(cmd("no-such-command", f"bad-{i}") if i % 10 == 5 else b"  \n ")
    batch.append(cmd("x-iommulab-query", "query", iommu=IOMMU, domain=1))
    c.send(b"".join(batch))
    assert c.recv() == {"return": {}, "id": "alloc"}
    for i in range(MANY):
        assert c.recv() == {"return": {}, "id": f"map-{i}"}
        if i % 10 == 5:
            answer = c.recv()
            assert answer["id"] == f"bad-{i}"
            assert answer["error"]["class"] == "CommandNotFound"
    query = c.recv()
    assert query["id"] == "query"
    (domain,) = [d for d in query["return"]["domains"] if d["domain"] == 1]
    got = [(m["iova"], m["addr"], m["write"]) for m in domain["mappings"]]
    assert got == [(2 * i * PAGE, i * PAGE, i % 2 == 0) for i in range(MANY)]


def test_huge_padded_command(lab: Lab) -> None:
    """A command spread over a megabyte of whitespace (hundreds of reads), followed by
    another command in the same write: both answered, nothing lost at read boundaries."""
    c = lab.connect()
    pad = b" \t\r\n" * (1 << 18)  # 1 MiB
    c.send(b'{"execute":' + pad + b'"query-status", "id":' + pad + b'"padded"}' + pad)
    c.send(cmd("query-name", "next"))
    assert c.recv() == {"return": {"running": False, "status": "prelaunch"}, "id": "padded"}
    assert c.recv() == {"return": {}, "id": "next"}


def test_oob_overtakes_blocked_in_band(lab: Lab) -> None:
    c = RawQmp(lab.monitor)
    if "oob" not in c.greeting["QMP"]["capabilities"]:
        pytest.skip("this monitor does not offer out-of-band execution")
    c.negotiate(oob=True)
    oob = b'{"exec-oob": "migrate-pause", "id": "oob-1"}'
    # blocked in-band command, a quick one and an OOB one, all in one write
    c.send(lab.blocking_cmd("blocks-1") + cmd("query-name", "quick-1") + oob)
    answer = c.recv()
    assert answer["id"] == "oob-1"  # migrate-pause fails (no migration), but it ran
    assert answer["error"]["class"] == "GenericError"
    lab.unblock()
    assert c.recv() == {"return": {}, "id": "blocks-1"}
    assert c.recv() == {"return": {}, "id": "quick-1"}

    # Behind a full request queue, the monitor is suspended: the OOB command waits
    # until the blocked command is done, then runs among the queued in-band ones.
    quick = b"".join(cmd("query-name", f"quick-2-{i}") for i in range(MANY))
    c.send(lab.blocking_cmd("blocks-2") + quick + oob.replace(b"oob-1", b"oob-2"))
    assert c.nothing_pending()
    lab.unblock()
    assert c.recv() == {"return": {}, "id": "blocks-2"}
    ids = [c.recv()["id"] for _ in range(MANY + 1)]
    assert ids.count("oob-2") == 1
    ids.remove("oob-2")
    assert ids == [f"quick-2-{i}" for i in range(MANY)]  # in-band answers stay in order


def test_client_disconnects_mid_command(lab: Lab) -> None:
    """Half a command, then the client goes: the next client starts clean."""
    c = lab.connect()
    c.send(b'{"execute": "query-name", "id": "never", "argu')
    c.close()
    c = lab.connect()
    c.send(cmd("query-status", "fresh"))
    assert c.recv() == {"return": {"running": False, "status": "prelaunch"}, "id": "fresh"}
    lab.alive()


def test_client_disconnects_with_input_held_back(lab: Lab) -> None:
    """A blocked command with more commands behind it in the same write (QEMU holds
    those back), then the client goes: the held commands never run and nothing of
    them reaches the next client."""
    c = lab.connect()
    held = b"".join(
        cmd("x-iommulab-domain-alloc", f"old-{i}", iommu=IOMMU, domain=100 + i, type="paging")
        for i in range(MANY)
    )
    c.send(lab.blocking_cmd("old-blocks") + held + b'{"execute": "query-na')
    assert c.nothing_pending()
    c.close()
    # The next client's greeting: QEMU has seen the first one go (the monitor
    # serves one client at a time) while the blocked command is still running.
    c = RawQmp(lab.monitor)
    lab.unblock()
    lab.alive()  # the blocked command is done: the main loop answers again
    c.send(json.dumps({"execute": "qmp_capabilities", "id": "caps"}).encode())
    c.send(cmd("query-status", "new"))
    answers = [c.recv(), c.recv()]
    if answers[0].get("id") == "old-blocks":
        # QEMU's existing behaviour: the answer to a command in flight goes to the
        # connection that is open when it completes (one monitor, not one per client)
        answers = [*answers[1:], c.recv()]
    assert answers == [
        {"return": {}, "id": "caps"},
        {"return": {"running": False, "status": "prelaunch"}, "id": "new"},
    ]
    assert c.nothing_pending()
    domains = lab.proc.qmp.cmd("x-iommulab-query", iommu=IOMMU, mappings=False)["domains"]
    assert [d["domain"] for d in domains if d["domain"] >= 100] == []


def test_pipelined_fds_each_reach_their_getfd(lab: Lab) -> None:
    """Two descriptors, each passed (SCM_RIGHTS) with a message of its own before the
    getfd that takes it (qemu.qmp's send_fd_scm), all sent at once behind a blocked
    command: each getfd gets one.  QEMU keeps only the descriptors of the last read
    that carried any, so input after a descriptor must not be read in one chunk
    with the next descriptor before the getfd has run."""
    c = lab.connect()
    c.send(lab.blocking_cmd("fd-blocks"))
    assert c.nothing_pending()
    pipes = [os.pipe() for _ in range(2)]
    try:
        for i, (r, _) in enumerate(pipes):
            socket.send_fds(c.sock, [b" "], [r])
            c.send(cmd("getfd", f"getfd-{i}", fdname=f"fd-{i}"))
        lab.unblock()
        assert c.recv() == {"return": {}, "id": "fd-blocks"}
        assert [c.recv() for _ in pipes] == [{"return": {}, "id": f"getfd-{i}"} for i in (0, 1)]
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    for i in (0, 1):  # both names hold a descriptor
        c.send(cmd("closefd", f"closefd-{i}", fdname=f"fd-{i}"))
        assert c.recv() == {"return": {}, "id": f"closefd-{i}"}
