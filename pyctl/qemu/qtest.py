"""A small client for QEMU's qtest protocol (``-accel qtest``).

QEMU listens on a unix socket (``-chardev socket,id=qt,path=P,server=on,
wait=off -qtest chardev:qt``); each command is one text line and gets one
``OK``/``FAIL`` line back.  Asynchronous ``IRQ`` lines are skipped.  Only
what the device tests need: memory and port I/O, and the virtual clock.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from qemu.qmp import ConnectError
from qemu.qmp.legacy import QEMUMonitorProtocol


class QTestError(RuntimeError):
    """QEMU answered a qtest command with FAIL or an unexpected reply."""


class QTest:
    """A connected qtest session."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sock.settimeout(timeout)
        self._sock = sock
        self._buf = b""

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QTest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _line(self) -> str:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QTestError("qtest connection closed by QEMU")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def command(self, cmd: str) -> list[str]:
        """Send one command; return the words after ``OK``."""
        self._sock.sendall(cmd.encode() + b"\n")
        while True:
            words = self._line().split()
            if words and words[0] == "IRQ":
                continue
            if not words or words[0] != "OK":
                raise QTestError(f"{cmd!r}: {' '.join(words)}")
            return words[1:]

    def readq(self, addr: int) -> int:
        return int(self.command(f"readq 0x{addr:x}")[0], 16)

    def readl(self, addr: int) -> int:
        return int(self.command(f"readl 0x{addr:x}")[0], 16)

    def writeq(self, addr: int, val: int) -> None:
        self.command(f"writeq 0x{addr:x} 0x{val:x}")

    def writel(self, addr: int, val: int) -> None:
        self.command(f"writel 0x{addr:x} 0x{val:x}")

    def writew(self, addr: int, val: int) -> None:
        self.command(f"writew 0x{addr:x} 0x{val:x}")

    def outl(self, port: int, val: int) -> None:
        self.command(f"outl 0x{port:x} 0x{val:x}")

    def inl(self, port: int) -> int:
        return int(self.command(f"inl 0x{port:x}")[0], 16)

    def memread(self, addr: int, size: int) -> bytes:
        """Read guest memory (physical address space)."""
        return bytes.fromhex(self.command(f"read 0x{addr:x} 0x{size:x}")[0][2:])

    def memwrite(self, addr: int, data: bytes) -> None:
        """Write guest memory (physical address space)."""
        if data:
            self.command(f"write 0x{addr:x} 0x{len(data):x} 0x{data.hex()}")

    def memset(self, addr: int, size: int, value: int) -> None:
        self.command(f"memset 0x{addr:x} 0x{size:x} 0x{value:x}")

    def clock_step(self, ns: int) -> int:
        """Advance the virtual clock; returns the new time in ns."""
        return int(self.command(f"clock_step {ns}")[0])


class QtestMachine:
    """One QEMU process under ``-accel qtest``, with a qtest session and QMP.

    ``args`` are the machine and device options; the accelerator,
    ``-nodefaults -display none`` and the two sockets are added here.  Files
    live in a private temporary directory; ``log`` is QEMU's output.
    ``wrapper`` goes before the binary (``valgrind --tool=callgrind ...``);
    ``timeout`` bounds the wait for the sockets and each qtest reply.
    """

    def __init__(
        self,
        binary: Path,
        args: Sequence[str],
        prefix: str = "iommulab-qtest-",
        wrapper: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        d = Path(self._dir.name)
        qmp_path, qtest_path = str(d / "qmp.sock"), str(d / "qtest.sock")
        self.log = d / "qemu.log"
        self.timeout = timeout
        cmd = [
            *wrapper,
            str(binary),
            "-accel", "qtest", "-nodefaults", "-display", "none",
            *args,
            "-chardev", f"socket,id=qmp,path={qmp_path},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            "-chardev", f"socket,id=qt,path={qtest_path},server=on,wait=off",
            "-qtest", "chardev:qt",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.qt = QTest(qtest_path, timeout)
            self.qmp = self._connect_qmp(qmp_path)
        except Exception as exc:
            self.proc.kill()
            status = self.proc.wait()
            output = self.log.read_text(errors="replace")[-2000:]
            self._dir.cleanup()
            raise RuntimeError(
                f"QEMU did not start ({type(exc).__name__}: {exc}; exit status {status}): "
                f"{output or 'no output'}"
            ) from exc

    @staticmethod
    def _connect_qmp(path: str, attempts: int = 3) -> QEMUMonitorProtocol:
        """QMP, negotiated.  About one start in a thousand, QEMU sent something other
        than the greeting first (an event, as QEMU may; the legacy client refuses
        that): a fresh connection gets a fresh greeting."""
        for _ in range(attempts - 1):
            qmp = QEMUMonitorProtocol(path)
            try:
                qmp.connect()
                return qmp
            except ConnectError:
                with contextlib.suppress(Exception):
                    qmp.close()
        qmp = QEMUMonitorProtocol(path)
        qmp.connect()  # the last attempt's error is the caller's
        return qmp

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """QMP quit, then kill if QEMU does not exit within ``timeout``; remove the files."""
        with contextlib.suppress(Exception):
            self.qmp.cmd("quit")
        try:
            self.proc.wait(timeout=max(10.0, self.timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            self.qmp.close()
        self.qt.close()
        self._dir.cleanup()
