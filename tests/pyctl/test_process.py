"""The one QEMU process class and the one QMP client, against a real QEMU.

QMP over a socket pair, a second monitor on a listening socket Python made,
qtest over a socket pair, shutdown (quit, wait, kill), start-up failures,
and the client's errors: busy monitor, refused, missing, not QMP, an event
before the greeting, a QEMU that dies under a command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testvm import qemu_binary

from pyctl.qemu.process import LaunchError, QemuProcess
from pyctl.qemu.qmp import ExecuteError, QmpError, QmpSession, QmpTimeout, parse_address

_X86 = qemu_binary()
needs_qemu = pytest.mark.skipif(_X86 is None, reason="qemu-system-x86_64 not built")


def bare(*extra: str) -> list[str]:
    assert _X86 is not None
    return [str(_X86), "-M", "none", "-display", "none", "-nodefaults", *extra]


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[QemuProcess]:
    with QemuProcess(bare(), monitor_path=tmp_path / "mon.sock") as q:
        yield q


@needs_qemu
def test_qmp_on_a_socket_pair_and_a_second_monitor(qemu: QemuProcess, tmp_path: Path) -> None:
    assert qemu.qmp.cmd("query-status")["status"] == "running"
    # the second monitor listens before QEMU runs: one connect, no retry loop
    with QmpSession.connect(str(tmp_path / "mon.sock"), connect_timeout=10) as other:
        other.cmd("stop")
        assert qemu.qmp.cmd("query-status")["status"] == "paused"
    assert "-mon" in qemu.argv and any("fd=" in a for a in qemu.argv)
    assert (qemu.workdir / "cmdline").read_text().splitlines() == qemu.argv


@needs_qemu
def test_shutdown_quits_and_cleans_up(tmp_path: Path) -> None:
    q = QemuProcess(bare(), monitor_path=tmp_path / "mon.sock").start()
    workdir = q.workdir
    assert workdir.is_dir() and (tmp_path / "mon.sock").exists()
    assert q.shutdown() == 0  # QMP quit: a clean exit
    assert not q.running() and not workdir.exists() and not (tmp_path / "mon.sock").exists()
    with pytest.raises(LaunchError, match="not running"):
        q.qmp.cmd("query-status")


@needs_qemu
def test_shutdown_kills_a_qemu_that_does_not_answer() -> None:
    q = QemuProcess(bare()).start()
    assert q.proc is not None
    os.kill(q.proc.pid, signal.SIGSTOP)  # neither answers quit nor exits
    assert q.shutdown(timeout=1) == -signal.SIGKILL


@needs_qemu
def test_qtest_on_a_socket_pair() -> None:
    with QemuProcess(bare("-accel", "qtest"), qtest=True) as q:
        t0 = int(q.qt.command("clock_step 1000")[0])
        assert int(q.qt.command("clock_step 1000")[0]) == t0 + 1000
    with QemuProcess(bare()) as q, pytest.raises(LaunchError, match="no qtest channel"):
        _ = q.qt


@needs_qemu
def test_qemu_that_fails_at_start_reports_why(tmp_path: Path) -> None:
    q = QemuProcess(bare("-device", "no-such-device"), tmp_path)
    with pytest.raises(LaunchError, match=r"status 1 at start: QEMU said: .*no-such-device"):
        q.start()
    assert not q.running()


@needs_qemu
def test_qemu_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import sys; sys.path[:0] = sys.argv[2:]\n"
        "from pyctl.qemu.process import QemuProcess\n"
        f"q = QemuProcess({bare()!r}).start()\n"
        "print(q.proc.pid, flush=True)\n"
        "import os; os._exit(0)\n"  # no shutdown: only PDEATHSIG stops QEMU
    )
    repo = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", script, "x", repo], capture_output=True, text=True, check=True
    )
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30  # the kernel kills it at once; this only bounds a failure
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid), f"QEMU {pid} outlived its parent"


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting to be reaped by its new parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(") ", 1)[-1].startswith("Z")


# ------------------------------------------------------------------ the client
@needs_qemu
def test_busy_monitor_is_a_timeout_not_a_hang(qemu: QemuProcess, tmp_path: Path) -> None:
    mon = str(tmp_path / "mon.sock")
    busy = r"no QMP greeting .* within 0\.5s .*another client"
    with QmpSession.connect(mon), pytest.raises(QmpTimeout, match=busy):
        QmpSession.connect(mon, connect_timeout=0.5)
    # free again: the next client is greeted
    with QmpSession.connect(mon) as again:
        assert again.cmd("query-status")["running"] is True


def test_refused_missing_and_not_qmp(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match=r"cannot connect to QMP at /nonexistent/q\.sock: .*No such"):
        QmpSession.connect("/nonexistent/q.sock")
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))  # bound, never listening
    with pytest.raises(QmpError, match="Connection refused"):
        QmpSession.connect(str(dead))
    s.close()
    http = [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    with (
        FakeMonitor(tmp_path / "http.sock", http, every=True) as fake,
        pytest.raises(QmpError, match="cannot connect to QMP"),
    ):
        QmpSession.connect(str(fake.path))


def test_an_event_before_the_greeting_costs_one_reconnect(tmp_path: Path) -> None:
    stale = json.dumps(
        {"event": "RESET", "data": {}, "timestamp": {"seconds": 0, "microseconds": 0}}
    )
    with FakeMonitor(tmp_path / "m.sock", [stale.encode() + b"\r\n"]) as fake:
        with QmpSession.connect(str(fake.path)) as s:
            assert s.cmd("query-status") == {"status": "running"}
        assert fake.connections == 2


@needs_qemu
def test_refused_command_and_events(qemu: QemuProcess) -> None:
    with pytest.raises(ExecuteError, match="no-such-command"):
        qemu.qmp.cmd("no-such-command")
    stops = qemu.qmp.listen(["STOP"])
    qemu.qmp.events()  # empty the session's own queue
    qemu.qmp.cmd("stop")
    qemu.qmp.cmd("cont")
    assert [e["event"] for e in qemu.qmp.events()] == ["STOP", "RESUME"]
    assert [e["event"] for e in qemu.qmp.drain(stops)] == ["STOP"]
    qemu.qmp.cmd("stop")
    assert qemu.qmp.wait_event("STOP", 10)["event"] == "STOP"


@needs_qemu
def test_a_qemu_that_dies_under_a_command_is_an_error() -> None:
    q = QemuProcess(bare()).start()
    assert q.proc is not None
    q.proc.kill()
    q.proc.wait()
    with pytest.raises(QmpError, match="query-status"):
        q.qmp.cmd("query-status")
    assert q.shutdown() == -signal.SIGKILL


def test_parse_address() -> None:
    assert parse_address("localhost:4444") == ("localhost", 4444)
    assert parse_address("/run/q.sock") == "/run/q.sock"
    assert parse_address("./a:1/q.sock") == "./a:1/q.sock"


class FakeMonitor:
    """A QMP server stand-in: on the first connection (each one if ``every``) it sends
    ``first``, then a greeting; it answers qmp_capabilities and query-status."""

    GREETING = json.dumps({"QMP": {"version": {}, "capabilities": []}}).encode() + b"\r\n"

    def __init__(self, path: Path, first: list[bytes], every: bool = False) -> None:
        self.path = path
        self.first = first
        self.every = every
        self.connections = 0
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(str(path))
        self._srv.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._srv.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.connections == 1 or self.every:
                    for chunk in self.first:
                        conn.sendall(chunk)
                conn.sendall(self.GREETING)
                for msg in self._messages(conn):
                    ret = {"status": "running"} if msg["execute"] == "query-status" else {}
                    reply = {"return": ret, **({"id": msg["id"]} if "id" in msg else {})}
                    conn.sendall(json.dumps(reply).encode() + b"\r\n")

    @staticmethod
    def _messages(conn: socket.socket) -> Iterator[dict[str, Any]]:
        """JSON objects as the client streams them (not one per line)."""
        buf = ""
        dec = json.JSONDecoder()
        while chunk := conn.recv(4096):
            buf += chunk.decode()
            while buf.strip():
                try:
                    msg, end = dec.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    break
                buf = buf.lstrip()[end:]
                yield msg
