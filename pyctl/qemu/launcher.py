"""Boot a guest: a :class:`~pyctl.qemu.process.QemuProcess` for a :class:`GuestConfig`.

The console goes to a file (kept as the log); :meth:`QemuInstance.wait_for`
watches it for a pattern with a bounded timeout and gives up early when QEMU
exits or the guest panics.  QMP is the process's own socket pair
(:attr:`QemuInstance.qmp`); ``qmp.sock`` in the work directory is a second
monitor for other clients (``iommulab --qmp WORKDIR/qmp.sock``) while the
guest runs.  Shutdown is QMP ``quit``, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from pyctl.qemu.machines import (
    HOST_CHANNEL_ON_CONSOLE,
    GuestConfig,
    build_command,
    qemu_build_dir,
)
from pyctl.qemu.process import SUN_PATH_MAX, LaunchError, QemuProcess

__all__ = [
    "FATAL_PATTERNS",
    "GuestDied",
    "GuestTimeout",
    "LaunchError",
    "QemuInstance",
    "create_raw_disk",
]

# Guest states that will never produce a result.  (An Oops or WARN is not
# here: the guest may go on, and a scenario it broke reports a failure or
# runs into the timeout.)
FATAL_PATTERNS = (
    r"Kernel panic - not syncing",
    r"Attempted to kill init",
)


class GuestTimeout(LaunchError):
    """A console pattern did not appear within the timeout."""


class GuestDied(LaunchError):
    """QEMU exited, or the guest hit a fatal state, before the pattern appeared."""


def _drain(sock: socket.socket) -> None:
    """Read ``sock`` until it closes, dropping what comes."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def create_raw_disk(path: Path, size: int) -> Path:
    """A sparse raw disk image of ``size`` bytes (a multiple of 4 KiB)."""
    if size <= 0 or size % 4096:
        raise ValueError(f"disk size {size}: must be a positive multiple of 4096")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


class QemuInstance(QemuProcess):
    """One guest machine for ``cfg`` with its files in ``workdir``.

    Files: ``console.log`` (serial console), ``qmp.sock`` (a QMP monitor for
    other clients), ``qemu.log`` (QEMU's own stdout/stderr), ``cmdline`` (the
    argv, one per line) and, with ``cfg.host_channel``, ``host.sock``
    (:meth:`tell_guest`).  Sockets go to a short temporary directory when the
    work directory's path is too long for a socket.
    """

    def __init__(
        self,
        cfg: GuestConfig,
        workdir: Path,
        build_dir: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.cfg = cfg
        self.build_dir = build_dir or qemu_build_dir()
        self.console_log = workdir / "console.log"
        self._sock_tmpdir: Path | None = None
        sockdir = workdir
        if len(str(workdir / "qmp.sock")) > SUN_PATH_MAX - 7:
            self._sock_tmpdir = Path(tempfile.mkdtemp(prefix="iommulab-qmp-"))
            sockdir = self._sock_tmpdir
        self.qmp_path = sockdir / "qmp.sock"
        self.host_path = sockdir / "host.sock"
        super().__init__(
            build_command(
                cfg,
                self.build_dir,
                self.console_log,
                self.host_path if cfg.host_channel else None,
            ),
            workdir,
            monitor_path=self.qmp_path,
            die_with_parent=die_with_parent,
        )
        self._host: socket.socket | None = None

    @property
    def console_path(self) -> Path:
        return self.console_log

    def start(self, timeout: float = 30.0) -> QemuInstance:
        self._check_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host_path.unlink(missing_ok=True)
        self.console_log.unlink(missing_ok=True)
        self.console_log.touch()
        super().start(timeout)
        return self

    def _release(self) -> None:
        if self._host is not None:
            with contextlib.suppress(OSError):  # wakes a _drain thread's recv
                self._host.shutdown(socket.SHUT_RDWR)
            self._host.close()
            self._host = None
        super()._release()
        if self._sock_tmpdir is not None and not self.running():
            shutil.rmtree(self._sock_tmpdir, ignore_errors=True)
            self._sock_tmpdir = None

    # -- console ---------------------------------------------------------
    def console_text(self) -> str:
        try:
            return self.console_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def wait_for(
        self, pattern: str, timeout: float, fatal: tuple[str, ...] = FATAL_PATTERNS, start: int = 0
    ) -> re.Match[str]:
        """Wait until ``pattern`` (a regex, multiline) appears in the console after ``start``.

        Raises GuestTimeout after ``timeout`` seconds, GuestDied when QEMU exits
        or a ``fatal`` pattern appears first.
        """
        want = re.compile(pattern, re.MULTILINE)
        bad = re.compile("|".join(f"(?:{p})" for p in fatal)) if fatal else None
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc is not None and self.proc.poll() is not None
            text = self.console_text()
            m = want.search(text, start)
            if m:
                return m
            if bad is not None:
                b = bad.search(text, start)
                if b:
                    raise GuestDied(
                        f"guest failed: {b.group(0)!r} on the console", self.console_path
                    )
            if exited:
                status = self.proc.returncode if self.proc else "?"
                raise GuestDied(
                    f"QEMU exited (status {status}) before {pattern!r} appeared; {self.log_tail()}",
                    self.console_path,
                )
            if time.monotonic() > deadline:
                raise GuestTimeout(
                    f"{pattern!r} did not appear on the console within {timeout}s",
                    self.console_path,
                )
            time.sleep(0.05)

    def tell_guest(self, line: str = "go") -> None:
        """Answer the agent's ``wait-host`` scenario: one line on the host channel.

        Send it after the scenario's ``IOMMULAB-WAIT`` line appeared (the agent
        opens the channel before printing it, so nothing sent is lost).
        """
        if not self.cfg.host_channel:
            raise LaunchError("this guest has no host channel (GuestConfig.host_channel)")
        if "\n" in line:
            raise ValueError("one line at a time")
        if self._host is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.host_path))
            except OSError as exc:
                s.close()
                raise LaunchError(f"cannot connect to the host channel: {exc}") from exc
            self._host = s
            if self.cfg.spec.name in HOST_CHANNEL_ON_CONSOLE:
                # the socket also carries the console (machines.py); unread, the
                # guest's one-byte writes fill it within a few hundred bytes and
                # stall the guest: read and drop (the console log has it all)
                threading.Thread(target=_drain, args=(s,), daemon=True).start()
        self._host.sendall(line.encode() + b"\n")

    def keep_console(self, dest: Path) -> Path:
        """Copy the console log to ``dest`` (e.g. a test's output directory)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.console_path, dest)
        return dest
