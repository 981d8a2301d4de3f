"""Start the project's QEMU, watch its console, talk QMP, and stop it cleanly.

The console goes to a file (kept as the log); :meth:`QemuInstance.wait_for`
polls it for a pattern with a bounded timeout and gives up early when QEMU
exits or the guest panics.  Shutdown is QMP ``quit``, then SIGTERM, then
SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from qemu.qmp import ConnectError
from qemu.qmp.legacy import QEMUMonitorProtocol

from pyctl.qemu.machines import GuestConfig, build_command, qemu_build_dir

# Guest states that will never produce a result.  (An Oops or WARN is not
# here: the guest may go on, and a scenario it broke reports a failure or
# runs into the timeout.)
FATAL_PATTERNS = (
    r"Kernel panic - not syncing",
    r"Attempted to kill init",
)


class LaunchError(Exception):
    """QEMU could not be started or stopped, or the guest failed; ``console`` is the log."""

    def __init__(self, message: str, console: Path | None = None) -> None:
        super().__init__(message + (f" (console log: {console})" if console else ""))
        self.console = console


class GuestTimeout(LaunchError):
    """A console pattern did not appear within the timeout."""


class GuestDied(LaunchError):
    """QEMU exited, or the guest hit a fatal state, before the pattern appeared."""


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent goes (PR_SET_PDEATHSIG), so no QEMU is orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)


def create_raw_disk(path: Path, size: int) -> Path:
    """A sparse raw disk image of ``size`` bytes (a multiple of 4 KiB)."""
    if size <= 0 or size % 4096:
        raise ValueError(f"disk size {size}: must be a positive multiple of 4096")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


class QemuInstance:
    """One QEMU process for ``cfg`` with its files in ``workdir``.

    Files: ``console.log`` (serial console), ``qmp.sock``, ``qemu.log``
    (QEMU's own stdout/stderr), ``cmdline`` (the argv, one per line) and,
    with ``cfg.host_channel``, ``host.sock`` (:meth:`tell_guest`).
    """

    def __init__(
        self,
        cfg: GuestConfig,
        workdir: Path,
        build_dir: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.build_dir = build_dir or qemu_build_dir()
        self.console_path = workdir / "console.log"
        self.qmp_path = workdir / "qmp.sock"
        self.host_path = workdir / "host.sock"
        self._qmp_tmpdir: Path | None = None
        if len(str(self.qmp_path)) > 100:
            # A UNIX socket path must fit in sun_path (108 bytes).
            self._qmp_tmpdir = Path(tempfile.mkdtemp(prefix="iommulab-qmp-"))
            self.qmp_path = self._qmp_tmpdir / "qmp.sock"
            self.host_path = self._qmp_tmpdir / "host.sock"
        self.log_path = workdir / "qemu.log"
        self.argv = build_command(
            cfg,
            self.build_dir,
            self.console_path,
            self.qmp_path,
            self.host_path if cfg.host_channel else None,
        )
        self._host: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self.started_at = 0.0
        # Linux ties this to the thread that starts QEMU: start it from a
        # thread that outlives it, or pass die_with_parent=False.
        self.die_with_parent = die_with_parent

    # -- lifecycle -------------------------------------------------------
    def start(self, qmp_timeout: float = 30.0) -> None:
        binary = Path(self.argv[0])
        if not binary.exists():
            raise LaunchError(
                f"{binary} not found: build QEMU with scripts/build-qemu.sh "
                "or point IOMMULAB_QEMU_BUILD at a build directory"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        for p in (self.console_path, self.qmp_path, self.host_path):
            p.unlink(missing_ok=True)
        self.console_path.touch()
        (self.workdir / "cmdline").write_text("\n".join(self.argv) + "\n")
        with self.log_path.open("wb") as log:
            self.started_at = time.monotonic()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                )
            except OSError as exc:
                raise LaunchError(f"cannot run {binary}: {exc}") from exc
        deadline = time.monotonic() + qmp_timeout
        while True:
            if self.proc.poll() is not None:
                raise LaunchError(
                    f"QEMU exited with status {self.proc.returncode} at start: "
                    f"{self._qemu_log_tail()}",
                    self.console_path,
                )
            if self.qmp_path.exists():
                try:
                    qmp = QEMUMonitorProtocol(str(self.qmp_path))
                    qmp.connect(negotiate=True)
                    self._qmp = qmp
                    return
                except (OSError, ConnectError):
                    # not listening yet, or (rarely) an event before the
                    # greeting: a fresh connection gets a fresh greeting
                    with contextlib.suppress(Exception):
                        qmp.close()
            if time.monotonic() > deadline:
                self.kill()
                raise LaunchError(
                    f"QMP socket {self.qmp_path} not ready in {qmp_timeout}s", self.console_path
                )
            time.sleep(0.05)

    @property
    def qmp(self) -> QEMUMonitorProtocol:
        if self._qmp is None:
            raise LaunchError("QEMU is not running (no QMP connection)")
        return self._qmp

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """QEMU's exit status, or None if it still runs after ``timeout`` seconds."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def shutdown(self, timeout: float = 10.0) -> int | None:
        """Stop QEMU: QMP quit, then SIGTERM, then SIGKILL.  Returns the exit status."""
        if self.proc is None:
            self._close_qmp()
            return None
        if self.proc.poll() is None and self._qmp is not None:
            # QEMU may exit before it answers.
            with contextlib.suppress(Exception):
                self._qmp.cmd("quit")
        status = self.wait_exit(timeout)
        if status is None:
            self.proc.send_signal(signal.SIGTERM)
            status = self.wait_exit(timeout)
        if status is None:
            status = self.kill()
        self._close_qmp()
        return status

    def kill(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        status = self.proc.wait()
        self._close_qmp()
        return status

    def _close_qmp(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None
        if self._qmp_tmpdir is not None and not self.running():
            shutil.rmtree(self._qmp_tmpdir, ignore_errors=True)

    def __enter__(self) -> QemuInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

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
                    f"QEMU exited (status {status}) "
                    f"before {pattern!r} appeared; {self._qemu_log_tail()}",
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
        self._host.sendall(line.encode() + b"\n")

    def _qemu_log_tail(self) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        except FileNotFoundError:
            return "no QEMU output"
        return "QEMU said: " + (" | ".join(tail) if tail else "nothing")

    def keep_console(self, dest: Path) -> Path:
        """Copy the console log to ``dest`` (e.g. a test's output directory)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.console_path, dest)
        return dest
