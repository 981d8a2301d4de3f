"""The error every rejected iommufd operation raises: an errno name and a message."""

from __future__ import annotations

import errno as _errno
from typing import Any

#: errno names the model uses, as the kernel's iommufd code returns them.
KNOWN_ERRNOS = frozenset(
    {
        "EINVAL",
        "ENOENT",
        "EBUSY",
        "EEXIST",
        "ENOSPC",
        "ENOMEM",
        "EOPNOTSUPP",
        "EMSGSIZE",
        "EOVERFLOW",
        "ERANGE",
        "EADDRINUSE",
        "EPERM",
        "EIO",
        # VFIO's container ioctls (pyctl/vfio)
        "ENXIO",
        "ENOTTY",
        "ENODEV",
    }
)


class IommufdError(Exception):
    """A rejected ioctl.  ``errno`` is the name (``"EBUSY"``), ``code`` the number.

    ``data`` carries what the kernel would still report alongside the error
    (for example ``num_iovas`` with EMSGSIZE).
    """

    def __init__(self, errno: str, message: str, **data: Any) -> None:
        if errno not in KNOWN_ERRNOS:
            raise ValueError(f"unknown errno name {errno!r}")
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message
        self.data: dict[str, Any] = dict(data)

    @property
    def code(self) -> int:
        value: int = getattr(_errno, self.errno)
        return value


class BackendError(Exception):
    """The hardware backend refused or failed a command (its state is unchanged)."""
