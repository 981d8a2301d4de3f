"""The ``iommulab`` command: boot guests behind the vIOMMU and look inside a running one.

  iommulab demo                          the main job (see pyctl.demo)
  iommulab boot MACHINE [...]            boot a guest with NVMe, run agent scenarios
  iommulab --qmp SOCK devices|domains|mappings|counters|faults|translate|picture
  iommulab --qmp SOCK objects|windows|map-ram|orphans   through the iommufd model / sPAPR windows

Views print tables for people, or JSON with --json.  Every error is one
``error: ...`` line on stderr and exit status 1; nothing is changed by a
command that fails.  --timeout bounds the QMP connect (a monitor that already
has a client accepts the connection but never answers).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from pyctl.iommufd.errors import BackendError
from pyctl.qemu.qmp import ExecuteError, QmpError
from pyctl.report import UserError

from .common import CONNECT_TIMEOUT, _ids, _int, _seconds, _size, connect
from .model import COMMANDS, ProgressLine
from .views import VIEWS

__all__ = ["ProgressLine", "build_parser", "main", "run_command"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iommulab", description=__doc__.split("\n\n")[0])
    p.add_argument("--qmp", metavar="SOCKET", help="QMP socket of a running QEMU")
    p.add_argument("--iommu", default="viommu0", help="vIOMMU qdev id or QOM path")
    p.add_argument("--json", action="store_true", help="JSON output for scripts")
    p.add_argument(
        "--timeout", type=_seconds, default=CONNECT_TIMEOUT, metavar="SECONDS",
        help=f"give up connecting to QMP after this long (default {CONNECT_TIMEOUT:g})",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    from pyctl import demo  # local: keeps `iommulab --help` light

    demo.add_arguments(sub.add_parser("demo", help="the main job: NVMe behind the vIOMMU"))
    demo.add_boot_arguments(sub.add_parser("boot", help="boot a guest and run agent scenarios"))
    for name, (_, help_text) in VIEWS.items():
        v = sub.add_parser(name, help=help_text)
        if name == "mappings":
            v.add_argument("--domain", type=_int)
        if name == "faults":
            v.add_argument("--clear", action="store_true", help="empty the queue after reading")
        if name == "translate":
            v.add_argument("device")
            v.add_argument("iova", type=_int)
            v.add_argument("--write", action="store_true")
        if name == "picture":
            v.add_argument("--domain", type=_int, help="a domain of --iommu")
            v.add_argument("--phb", type=_int, help="or a pseries PHB: its windows and TCEs")
            v.add_argument("-o", "--output", default="iova.svg")
    for name, (_, help_text) in COMMANDS.items():
        v = sub.add_parser(name, help=help_text)
        if name in ("objects", "map-ram", "orphans"):
            v.add_argument(
                "--shared", type=_ids, action="append", metavar="D,D",
                help="paging domains that share one IOAS (repeatable)",
            )  # fmt: skip
            v.add_argument(
                "--blocked", action="append", default=[], metavar="DEVICE",
                help="also bind this detached device (repeatable)",
            )  # fmt: skip
            v.add_argument(
                "--nest-parent", action="append", default=[], type=_int, metavar="D",
                help="this paging domain was allocated NEST_PARENT (repeatable)",
            )  # fmt: skip
        if name == "map-ram":
            v.add_argument("device", help="device to bind (qdev id or QOM path)")
            v.add_argument("--batch", type=_size, help="bytes per IOAS_MAP, e.g. 64M")
        if name == "orphans":
            v.add_argument("--reclaim", action="store_true", help="free them")
        if name == "windows":
            v.add_argument("--phb", type=_int, default=0, help="PHB index (default 0)")
            v.add_argument("--device", help="the PHB of this device instead")
            v.add_argument("--entries", action="store_true", help="decode the TCEs")
    return p


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message (or its type, if it has none), newlines folded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ExecuteError):  # QEMU refused: say which command
        text = f"{exc.sent['execute']}: {text}"
    return text


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.command in COMMANDS:
        COMMANDS[args.command][0](args, out)
        return 0
    if args.command in VIEWS:
        with connect(args) as qmp:
            VIEWS[args.command][0](qmp, args, out)
        return 0
    from pyctl import demo

    return demo.run(args, out)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """The ``iommulab`` command.  Every failure is one ``error:`` line on stderr and exit
    status 1 (``IOMMULAB_DEBUG=1`` adds the traceback of an unexpected one)."""
    args = build_parser().parse_args(argv)
    try:
        return run_command(args, out)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UserError, QmpError, ExecuteError, BackendError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        # the model's and the launcher's errors (IommufdError, LaunchError,
        # ConfigError...) and bugs: still one line, the traceback on request
        if os.environ.get("IOMMULAB_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
