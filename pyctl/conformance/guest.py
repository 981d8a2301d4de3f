"""Running the differential against a guest kernel: the runner in the initramfs,
the host channel as the transport, the console watched for oopses.

The runner binary (scripts/build-conformance.sh) reaches the guest as a
second cpio archive appended to the image's initramfs (the kernel unpacks
concatenated archives), so any image whose kernel has CONFIG_IOMMUFD_TEST
can run it.  The agent's ``iommufd-conformance`` scenario starts it on the
host channel.
"""

from __future__ import annotations

import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pyctl.guest import cpio
from pyctl.guest.image import GuestImage
from pyctl.guest.results import BOOT_PATTERN, Scenario, cmdline_arg
from pyctl.qemu.launcher import LaunchError, QemuInstance
from pyctl.qemu.machines import HOST_CHANNEL_ON_CONSOLE, GuestConfig

from .differ import RunnerFailure, Session

REPO = Path(__file__).resolve().parents[2]
SCENARIO = "iommufd-conformance"
GUEST_PATH = "bin/iommufd-conformance"
#: a kernel that oopses, BUGs, WARNs or panics fails the run
KERNEL_TROUBLE = re.compile(
    r"(Oops|BUG: |WARNING: CPU|Kernel panic|general protection fault|Unable to handle kernel)"
)


def build_runner(arch: str) -> Path:
    """The runner for ``arch`` (x86_64 or ppc64le), built once into the cache."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts/build-conformance.sh"), arch],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"build-conformance.sh {arch} failed: {out.stderr.strip()[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1]) / f"iommufd-conformance-{arch}"


def overlay_initrd(image: GuestImage, runner: Path, dest: Path) -> Path:
    """``image``'s initramfs with the runner appended as /bin/iommufd-conformance."""
    arc = cpio.Archive()
    arc.add(cpio.directory("bin"))
    arc.add(cpio.regular(GUEST_PATH, runner.read_bytes(), 0o755))
    assert image.initrd is not None
    dest.write_bytes(image.initrd.read_bytes() + arc.to_gzip())
    return dest


class SocketTransport:
    """Lines over the host channel's socket (QEMU's end of the guest's hvc1/ttyS1)."""

    def __init__(self, path: Path, connect_timeout: float = 10.0) -> None:
        deadline = time.monotonic() + connect_timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock = s
        self.buf = b""

    def send(self, lines: list[str]) -> None:
        self.sock.sendall(("\n".join(lines) + "\n").encode())

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.sock], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")

    def close(self) -> None:
        self.sock.close()


class ConsoleTransport(SocketTransport):
    """The host channel that is the guest's console (PowerNV's hvc0, machines.py).

    The socket carries the console's output too: kernel messages, the agent's
    lines, the runner's stderr.  Only the runner's lines are returned (its
    hello, ``SEQ ok|e|bad ...``, ``- ...``); the rest is in the console log.
    It connects before the guest boots, so the hello is not missed (the
    console hub sends nothing to a socket nobody is connected to), and a
    thread reads all the time: the guest's UART sends a byte at a time, and
    unread one-byte messages fill a Unix socket's buffer after a few hundred
    bytes, which stalls the guest's console.
    """

    RUNNER_LINE = re.compile(r"^(hello |- |[0-9a-f]+ (ok|e|bad)( |$))")

    def __init__(self, path: Path, connect_timeout: float = 10.0) -> None:
        super().__init__(path, connect_timeout)
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._pump, name="console-channel", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof = True
                else:
                    self.buf += chunk
                self._cond.notify_all()
            if not chunk:
                return

    def _rawline(self, deadline: float) -> str:
        with self._cond:
            while b"\n" not in self.buf:
                if self._eof:
                    raise EOFError
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._cond.wait(min(left, 1.0))
            line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace").lstrip("\r")

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self._rawline(deadline)
            if self.RUNNER_LINE.match(line):
                return line

    def close(self) -> None:
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5.0)


def console_check(inst: QemuInstance, start: int = 0) -> None:
    """RunnerFailure if the guest kernel reported trouble (with the console's end)."""
    text = inst.console_text()
    m = KERNEL_TROUBLE.search(text, start)
    if m:
        tail = text[max(m.start() - 200, 0) : m.start() + 3000]
        raise RunnerFailure(f"guest kernel: {m.group(0)!r} on the console:\n{tail}")
    if inst.proc is not None and inst.proc.poll() is not None:
        raise RunnerFailure(f"QEMU exited; console end:\n{text[-3000:]}")


@contextmanager
def guest_session(
    machine: str,
    image: GuestImage,
    runner: Path,
    workdir: Path,
    boot_timeout: float = 300.0,
    answer_timeout: float = 120.0,
) -> Iterator[tuple[Session, QemuInstance]]:
    """Boot ``machine`` with the runner, connected: ``(session, instance)``.

    The machine is shut down on exit; its console stays in ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    initrd = overlay_initrd(image, runner, workdir / "initrd-conformance.cpio.gz")
    cfg = GuestConfig(
        machine=machine,
        kernel=image.kernel,
        initrd=initrd,
        append=cmdline_arg([Scenario(SCENARIO)], check_known=False),
        host_channel=True,
        memory_mib=1024,
    )
    inst = QemuInstance(cfg, workdir)
    transport: SocketTransport | None = None
    try:
        inst.start()
        if machine in HOST_CHANNEL_ON_CONSOLE:
            transport = ConsoleTransport(inst.host_path)
        try:
            inst.wait_for(BOOT_PATTERN, boot_timeout)
        except LaunchError as exc:
            raise RunnerFailure(f"the guest did not boot: {exc}") from exc
        if transport is None:
            transport = SocketTransport(inst.host_path)
        try:
            session = Session(transport, answer_timeout, check=lambda: console_check(inst))
        except RunnerFailure as exc:
            console_check(inst)
            raise RunnerFailure(f"{exc}; console end:\n{inst.console_text()[-3000:]}") from exc
        yield session, inst
    finally:
        if transport is not None:
            transport.close()
        inst.shutdown()
