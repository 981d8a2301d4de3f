"""What the ``iommulab`` subcommands share: argument types, the QMP address and
connection, and the error a user can fix."""

from __future__ import annotations

import argparse
import os
import stat
from typing import Any

from pyctl.qemu.qmp import QmpSession, parse_address
from pyctl.report import UserError

#: seconds to connect and be greeted (a monitor that already has a client never greets)
CONNECT_TIMEOUT = 10.0


class CliError(UserError):
    """A user-facing error: printed as 'error: ...', exit status 1."""


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _ids(text: str) -> list[int]:
    try:
        return [int(x, 0) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of domain ids: {text!r}") from None


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1].upper() in units:
            return int(text[:-1], 0) * units[text[-1].upper()]
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return v


def qmp_address(args: argparse.Namespace) -> str | tuple[str, int]:
    """--qmp as an address, checked: a command that talks to QEMU needs it, and a path
    must be a socket (a clear message beats the connect error)."""
    if not args.qmp:
        raise CliError("this command talks to a running QEMU: give --qmp SOCKET")
    address = parse_address(args.qmp)
    if isinstance(address, str):
        try:
            mode = os.stat(address).st_mode
        except FileNotFoundError:
            raise CliError(f"no QMP socket at {address}") from None
        except OSError as exc:
            raise CliError(f"cannot use {address}: {exc.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise CliError(f"{address} is not a socket (give QEMU's QMP socket with --qmp)")
    return address


def connect(args: argparse.Namespace) -> QmpSession:
    """A QMP session on --qmp within --timeout (QmpError says why not)."""
    return QmpSession.connect(qmp_address(args), connect_timeout=args.timeout, name="iommulab-cli")


def qmp_cmd(qmp: QmpSession, name: str, **args: Any) -> Any:
    """One command (QEMU's refusal becomes one error line in main())."""
    return qmp.cmd(name, **args)
