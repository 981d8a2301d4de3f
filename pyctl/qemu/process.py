"""One QEMU process: start it, talk QMP (and qtest), capture its output, stop it cleanly.

The pattern of QEMU's own python/qemu/machine (QEMUMachine): the sockets
exist before QEMU does, so nothing waits for a file to appear.

- QMP: one end of a socket pair is passed to QEMU (``-chardev socket,fd=N``);
  QEMU greets on it as soon as its monitor exists, and :attr:`QemuProcess.qmp`
  is a negotiated :class:`~pyctl.qemu.qmp.QmpSession` on the other end.
- qtest (``qtest=True``): the same with a second pair, :attr:`QemuProcess.qt`.
- ``monitor_path``: a second QMP monitor for other clients (``iommulab --qmp``);
  Python binds and listens on the path and hands QEMU the listening socket, so
  a client can connect as soon as :meth:`QemuProcess.start` returns.
- QEMU's stdout and stderr go to ``qemu.log``, its argv to ``cmdline``, in
  ``workdir`` (a private temporary directory, removed at shutdown, if none).
- Shutdown: QMP ``quit``, wait, then SIGKILL.  QEMU gets SIGKILL when its
  parent dies (PR_SET_PDEATHSIG), so no QEMU outlives the lab.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from pyctl.qemu.qmp import QmpError, QmpSession
from pyctl.qemu.qtest import QTest

#: a UNIX socket path must fit in sun_path (108 bytes)
SUN_PATH_MAX = 107


class LaunchError(Exception):
    """QEMU could not be started or stopped, or the guest failed; ``console`` is the log."""

    def __init__(self, message: str, console: Path | None = None) -> None:
        super().__init__(message + (f" (console log: {console})" if console else ""))
        self.console = console


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent goes (PR_SET_PDEATHSIG), so no QEMU is orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)


def listening_socket(path: Path) -> socket.socket:
    """A UNIX stream socket bound to ``path`` (replacing a stale file) and listening."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise LaunchError(f"socket path {path} is longer than {SUN_PATH_MAX} bytes")
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(4)
    except OSError:
        sock.close()
        raise
    return sock


class QemuProcess:
    """One QEMU process for ``argv`` (binary and options; the QMP/qtest options are added).

    ``wrapper`` runs QEMU under another program (``valgrind ...``); ``timeout``
    of :meth:`start` bounds the wait for QEMU's greeting (it covers QEMU's
    own start-up, slow under valgrind).  Start it from a thread that outlives
    it, or pass ``die_with_parent=False`` (Linux ties PDEATHSIG to the thread).
    """

    def __init__(
        self,
        argv: Sequence[str],
        workdir: Path | None = None,
        *,
        wrapper: Sequence[str] = (),
        qtest: bool = False,
        monitor_path: Path | None = None,
        qmp_timeout: float | None = 60.0,
        die_with_parent: bool = True,
        prefix: str = "iommulab-qemu-",
    ) -> None:
        self._tmpdir: Path | None = None
        if workdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=prefix))
            workdir = self._tmpdir
        self.workdir = workdir
        self.base_argv = list(argv)
        self.wrapper = list(wrapper)
        self.with_qtest = qtest
        self.monitor_path = monitor_path
        self.qmp_timeout = qmp_timeout
        self.die_with_parent = die_with_parent
        self.log_path = workdir / "qemu.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.argv: list[str] = []
        self._qmp: QmpSession | None = None
        self._qt: QTest | None = None
        self._listener: socket.socket | None = None

    # -- start ------------------------------------------------------------------
    @property
    def binary(self) -> Path:
        return Path(self.base_argv[0])

    def _check_binary(self) -> None:
        if not self.binary.exists():
            raise LaunchError(
                f"{self.binary} not found: build QEMU with scripts/build-qemu.sh "
                "or point IOMMULAB_QEMU_BUILD at a build directory"
            )

    def start(self, timeout: float = 30.0) -> Self:
        """Run QEMU and connect QMP (and qtest); LaunchError with QEMU's output if it fails."""
        if self.proc is not None:
            raise LaunchError("this QEMU was started already")
        self._check_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        qmp_pair = socket.socketpair()
        qt_pair = socket.socketpair() if self.with_qtest else None
        theirs = [qmp_pair[1], *([qt_pair[1]] if qt_pair else [])]
        extra = [
            "-chardev", f"socket,id=iommulab-qmp,fd={qmp_pair[1].fileno()}",
            "-mon", "chardev=iommulab-qmp,mode=control",
        ]  # fmt: skip
        if qt_pair is not None:
            extra += [
                "-chardev", f"socket,id=iommulab-qtest,fd={qt_pair[1].fileno()}",
                "-qtest", "chardev:iommulab-qtest",
            ]  # fmt: skip
        try:
            if self.monitor_path is not None:
                self._listener = listening_socket(self.monitor_path)
                theirs.append(self._listener)
                extra += [
                    "-chardev",
                    f"socket,id=iommulab-mon,fd={self._listener.fileno()},server=on,wait=off",
                    "-mon", "chardev=iommulab-mon,mode=control",
                ]  # fmt: skip
            self.argv = [*self.wrapper, *self.base_argv, *extra]
            (self.workdir / "cmdline").write_text("\n".join(self.argv) + "\n")
            self._spawn([s.fileno() for s in theirs])
        except BaseException:
            for s in (*qmp_pair, *(qt_pair or ())):
                s.close()
            self._close_listener()
            raise
        for s in theirs:  # QEMU holds its ends and the listening socket now
            s.close()
        self._listener = None  # the path stays until shutdown
        try:
            self._qmp = QmpSession.connect(
                qmp_pair[0], connect_timeout=timeout, timeout=self.qmp_timeout, name="iommulab"
            )
            if qt_pair is not None:
                self._qt = QTest(qt_pair[0], timeout=timeout)
                qt_pair = None
        except (QmpError, OSError) as exc:
            if qt_pair is not None:
                qt_pair[0].close()
            self._failed_start(exc)
        return self

    def _spawn(self, fds: list[int]) -> None:
        with self.log_path.open("wb") as log:
            self.started_at = time.monotonic()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=fds,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                )
            except OSError as exc:
                raise LaunchError(f"cannot run {self.argv[0]}: {exc}") from exc

    def _failed_start(self, exc: Exception) -> None:
        """QEMU did not greet: say why (its exit status and output) and clean up."""
        assert self.proc is not None
        try:
            status: int | None = self.proc.wait(timeout=5)
            why = f"QEMU exited with status {status} at start"
        except subprocess.TimeoutExpired:
            why = f"QEMU did not start ({exc})"
        self.kill()
        raise LaunchError(f"{why}: {self.log_tail()}", self.console_path) from exc

    # -- channels ---------------------------------------------------------------
    @property
    def qmp(self) -> QmpSession:
        if self._qmp is None:
            raise LaunchError("QEMU is not running (no QMP connection)")
        return self._qmp

    @property
    def qt(self) -> QTest:
        if self._qt is None:
            raise LaunchError("this QEMU has no qtest channel (qtest=True) or is not running")
        return self._qt

    @property
    def console_path(self) -> Path | None:
        """The console log, for machines that keep one (see the launcher)."""
        return None

    # -- state ------------------------------------------------------------------
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def wait_exit(self, timeout: float) -> int | None:
        """QEMU's exit status, or None if it still runs after ``timeout`` seconds."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 5) -> str:
        """The end of QEMU's own output, for error messages."""
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except FileNotFoundError:
            return "no QEMU output"
        return "QEMU said: " + (" | ".join(tail) if tail else "nothing")

    # -- stop -------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> int | None:
        """QMP ``quit``, wait up to ``timeout`` s, then SIGKILL.  Returns the exit status."""
        if self.proc is None:
            self._release()
            return None
        if self.proc.poll() is None and self._qmp is not None:
            with contextlib.suppress(QmpError, OSError):
                # QEMU may exit before it answers
                self._qmp.execute("quit", timeout=timeout)
        status = self.wait_exit(timeout)
        if status is None:
            status = self.kill()
        self._release()
        return status

    def kill(self) -> int | None:
        """SIGKILL now; returns the exit status."""
        if self.proc is None:
            self._release()
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        status = self.proc.wait()
        self._release()
        return status

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _release(self) -> None:
        """Close the channels; remove the monitor socket and the private directory."""
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._qt is not None:
            self._qt.close()
            self._qt = None
        self._close_listener()
        if self.running():
            return
        if self.monitor_path is not None:
            self.monitor_path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
