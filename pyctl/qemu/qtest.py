"""A small client for QEMU's qtest protocol (``-accel qtest``).

Each command is one text line and gets one ``OK``/``FAIL`` line back;
asynchronous ``IRQ`` lines are skipped.  Only what the device tests need:
memory and port I/O, and the virtual clock.  The machine that runs it is
:class:`pyctl.qemu.qtest_machine.QtestMachine`.
"""

from __future__ import annotations

import socket
from types import TracebackType


class QTestError(RuntimeError):
    """QEMU answered a qtest command with FAIL or an unexpected reply."""


class QTest:
    """A connected qtest session: a socket QEMU already has (a socket pair's end), or the
    path of a socket QEMU listens on (it exists before QEMU does: nothing to wait for)."""

    def __init__(self, channel: socket.socket | str, timeout: float = 30.0) -> None:
        if isinstance(channel, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(channel)
            except OSError:
                sock.close()
                raise
        else:
            sock = channel
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
