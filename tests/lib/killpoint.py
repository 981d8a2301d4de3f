"""Test-only entry point: the iommulab CLI, killed with SIGKILL after its Nth QMP command.

    IOMMULAB_KILL_AFTER=N  python tests/lib/killpoint.py --qmp SOCK map-ram edu0
    IOMMULAB_QMP_LOG=FILE  python tests/lib/killpoint.py ...   (one command name a line)

The hook wraps :meth:`pyctl.qemu.qmp.QmpSession.execute` and ``finish`` (a command sent
with a payload fd, counted as one when answered) in this process only:
the product code has no kill point of its own, and without the variables this
is just ``iommulab``.  The kill comes after QEMU answered command N (a
command QEMU received is carried out whether or not its client lives to read
the answer, so "after" is also what a kill in mid-command leaves).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from pyctl import cli
from pyctl.qemu.qmp import QmpSession


def install(kill_after: int | None, log: Path | None) -> None:
    """Count QMP commands; log their names to ``log``; SIGKILL self after ``kill_after``."""
    sent = 0

    def counted(original: Any) -> Any:
        def execute(self: QmpSession, *args: Any, **kwargs: Any) -> Any:
            nonlocal sent
            result = original(self, *args, **kwargs)
            sent += 1
            if log is not None:
                with log.open("a") as f:
                    f.write(f"{getattr(args[0], 'command', args[0])}\n")
            if sent == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return execute

    QmpSession.execute = counted(QmpSession.execute)  # type: ignore[method-assign]
    QmpSession.finish = counted(QmpSession.finish)  # type: ignore[method-assign]


def main() -> int:
    kill = os.environ.get("IOMMULAB_KILL_AFTER")
    log = os.environ.get("IOMMULAB_QMP_LOG")
    install(int(kill) if kill else None, Path(log) if log else None)
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
