"""The VFIO device cdev's part (drivers/vfio/device_cdev.c, drivers/vfio/iommufd.c).

A VMM reaches iommufd's device calls through the VFIO device file:
VFIO_DEVICE_BIND_IOMMUFD, VFIO_DEVICE_ATTACH_IOMMUFD_PT (which replaces when
the device is already attached), VFIO_DEVICE_DETACH_IOMMUFD_PT (nothing to do
when it is not attached) and closing the file (unbind).  These are VFIO's
rules on top of device.py's iommufd ones.
"""

from __future__ import annotations

from . import device
from .errors import BackendError, IommufdError
from .objtable import Ictx


def bind(ictx: Ictx, name: object) -> int:
    """vfio_df_ioctl_bind_iommufd(); returns the dev_id.

    ``name`` is the QEMU device (qdev id or QOM path).  A device already bound
    is EINVAL (``df->access_granted`` on the same file, ``vfio_df_open()``'s
    open_count for another one).
    """
    if not isinstance(name, str) or not name:
        raise IommufdError("EINVAL", "device must be a non-empty string")
    try:
        info = ictx.backend.device_info(name)
    except BackendError as e:  # no such device file
        raise IommufdError("ENOENT", f"device {name!r}: {e}") from e
    if info.device in ictx.by_name:
        raise IommufdError("EINVAL", f"device {name!r} is already bound")
    return device.bind(ictx, info)


def attach(ictx: Ictx, dev_id: object, pt_id: object) -> int:
    """vfio_df_ioctl_attach_pt() -> vfio_iommufd_physical_attach_ioas(): attach, or
    iommufd_device_replace() if the device is attached; returns the HWPT id."""
    dev = ictx.dev(dev_id)
    return device.change_pt(ictx, dev, pt_id, replace=dev.hwpt_id is not None)


def detach(ictx: Ictx, dev_id: object) -> None:
    """vfio_df_ioctl_detach_pt() -> vfio_iommufd_physical_detach_ioas(): a device
    that is not attached is left as it is (success)."""
    dev = ictx.dev(dev_id)
    if dev.hwpt_id is not None:
        device.detach(ictx, dev)


def unbind(ictx: Ictx, dev_id: object) -> None:
    """vfio_df_unbind_iommufd() -> vfio_iommufd_physical_unbind(): detach, then unbind."""
    dev = ictx.dev(dev_id)
    if dev.hwpt_id is not None:
        device.detach(ictx, dev)
    del ictx.by_name[dev.name]
    ictx.table.forget(dev.id)
