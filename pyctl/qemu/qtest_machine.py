"""One QEMU process under ``-accel qtest``: qtest and QMP, each on a socket pair."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyctl.qemu.process import QemuProcess


class QtestMachine(QemuProcess):
    """One QEMU process under ``-accel qtest``, started: :attr:`qt` (qtest) and :attr:`qmp`.

    ``args`` are the machine and device options; the accelerator and
    ``-nodefaults -display none`` are added here.  Files live in a private
    temporary directory; ``log`` is QEMU's output.  ``wrapper`` goes before
    the binary (``valgrind --tool=callgrind ...``); ``timeout`` bounds QEMU's
    start and each qtest reply.
    """

    def __init__(
        self,
        binary: Path,
        args: Sequence[str],
        prefix: str = "iommulab-qtest-",
        wrapper: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            [str(binary), "-accel", "qtest", "-nodefaults", "-display", "none", *args],
            wrapper=wrapper,
            qtest=True,
            prefix=prefix,
            qmp_timeout=max(60.0, timeout),
        )
        self.log = self.log_path
        self.timeout = timeout
        self.start(timeout)

    def alive(self) -> bool:
        return self.running()

    def close(self) -> None:
        """QMP quit, then kill if QEMU does not exit within ``timeout``; remove the files."""
        self.shutdown(max(10.0, self.timeout))
