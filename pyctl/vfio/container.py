"""A VFIO container on the lab: the ioctls of /dev/vfio/vfio, by name, over the model.

A script written against the VFIO container ioctls ports by renaming each
ioctl to the method of the same name (``VFIO_IOMMU_MAP_DMA`` ->
:meth:`VfioContainer.iommu_map_dma`); errors are
:class:`~pyctl.iommufd.IommufdError` with the kernel's errno.  A group is
given as the QEMU devices (qdev ids or QOM paths) it holds
(``VFIO_GROUP_SET_CONTAINER``).  Two IOMMU drivers are offered:
``VFIO_TYPE1_IOMMU``/``VFIO_TYPE1v2_IOMMU`` as iommufd's vfio_compat
(type1.py) and ``VFIO_SPAPR_TCE_v2_IOMMU`` on the PPC64 domains
(spapr_tce.py).  Before ``VFIO_SET_IOMMU`` every IOMMU ioctl is ENOTTY, as
is any ioctl the chosen driver does not implement.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyctl.iommufd import IommufdContext, IommufdError
from pyctl.iommufd.uapi import u64

from .spapr_tce import SpaprTceV2Driver
from .type1 import Type1Driver
from .uapi import (
    VFIO_API_VERSION,
    VFIO_TYPE1_IOMMU,
    VFIO_UNMAP_ALL,
    VFIO_SPAPR_TCE_v2_IOMMU,
    VFIO_TYPE1v2_IOMMU,
    VfioIommuSpaprTceInfo,
    VfioIommuType1Info,
)

_TYPE1_EXT = {VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, VFIO_UNMAP_ALL}
_SPAPR_EXT = {VFIO_SPAPR_TCE_v2_IOMMU}


class VfioContainer:
    """An open /dev/vfio/vfio on an :class:`~pyctl.iommufd.IommufdContext`."""

    def __init__(self, ctx: IommufdContext) -> None:
        self.ctx = ctx
        self.groups: list[list[str]] = []
        self._attached: list[list[int]] = []
        self.driver: Type1Driver | SpaprTceV2Driver | None = None

    # ------------------------------------------------------------ container ioctls
    def get_api_version(self) -> int:
        return VFIO_API_VERSION

    def check_extension(self, ext: object) -> int:
        """VFIO_CHECK_EXTENSION: the chosen driver's answer, or any driver's before."""
        e = u64("extension", ext)
        if isinstance(self.driver, Type1Driver):
            return int(e in _TYPE1_EXT)
        if isinstance(self.driver, SpaprTceV2Driver):
            return int(e in _SPAPR_EXT)
        return int(e in _TYPE1_EXT | _SPAPR_EXT)

    def group_set_container(self, devices: Sequence[str]) -> int:
        """VFIO_GROUP_SET_CONTAINER of the group holding ``devices``; returns its index."""
        if not devices or not all(isinstance(d, str) and d for d in devices):
            raise IommufdError("EINVAL", "a group is a non-empty list of device names")
        if any(d in g for g in self.groups for d in devices):
            raise IommufdError("EINVAL", "the group is in the container already")
        if self.driver is not None:
            self._attached.append(self.driver.attach_group(devices))
        self.groups.append(list(devices))
        return len(self.groups) - 1

    def group_unset_container(self, group: int) -> None:
        """VFIO_GROUP_UNSET_CONTAINER: its devices are detached and unbound."""
        if not 0 <= group < len(self.groups):
            raise IommufdError("EINVAL", f"group {group} is not in the container")
        if self.driver is not None:
            self.driver.detach_group(self._attached.pop(group))
        del self.groups[group]
        if not self.groups:
            self.driver = None  # the last group takes the IOMMU with it

    def set_iommu(self, kind: object) -> None:
        """VFIO_SET_IOMMU: needs a group and no IOMMU yet (EINVAL)."""
        k = u64("type", kind)
        if not self.groups or self.driver is not None:
            raise IommufdError("EINVAL", "VFIO_SET_IOMMU needs a group and no IOMMU set")
        drv: Type1Driver | SpaprTceV2Driver
        if k in (VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU):
            drv = Type1Driver(self.ctx, k)
        elif k == VFIO_SPAPR_TCE_v2_IOMMU:
            drv = SpaprTceV2Driver(self.ctx)
        else:
            raise IommufdError("EINVAL", f"type {k}: no such IOMMU driver here")
        attached: list[list[int]] = []
        try:
            for g in self.groups:
                attached.append(drv.attach_group(g))
        except IommufdError:
            for devs in reversed(attached):
                drv.detach_group(devs)
            self.ctx.destroy(drv.ioas)
            raise
        self.driver, self._attached = drv, attached

    # ------------------------------------------------------------ IOMMU ioctls
    def _type1(self) -> Type1Driver:
        if not isinstance(self.driver, Type1Driver):
            raise IommufdError("ENOTTY", "not a type1 container")
        return self.driver

    def _spapr(self) -> SpaprTceV2Driver:
        if not isinstance(self.driver, SpaprTceV2Driver):
            raise IommufdError("ENOTTY", "not an sPAPR TCE v2 container")
        return self.driver

    def iommu_get_info(self) -> VfioIommuType1Info:
        return self._type1().get_info()

    def iommu_map_dma(self, vaddr: int, iova: int, size: int, flags: int) -> None:
        if self.driver is None:
            raise IommufdError("ENOTTY", "no IOMMU set")
        self.driver.map_dma(vaddr, iova, size, flags)

    def iommu_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        if self.driver is None:
            raise IommufdError("ENOTTY", "no IOMMU set")
        return self.driver.unmap_dma(iova, size, flags)

    def iommu_enable(self) -> None:
        """VFIO_IOMMU_ENABLE: ENOTTY (v2 has none; type1 neither)."""
        raise IommufdError("ENOTTY", "VFIO_IOMMU_ENABLE is sPAPR TCE v1 only")

    def iommu_disable(self) -> None:
        raise IommufdError("ENOTTY", "VFIO_IOMMU_DISABLE is sPAPR TCE v1 only")

    def iommu_spapr_tce_get_info(self) -> VfioIommuSpaprTceInfo:
        return self._spapr().get_info()

    def iommu_spapr_register_memory(self, vaddr: int, size: int, flags: int = 0) -> None:
        self._spapr().register_memory(vaddr, size, flags)

    def iommu_spapr_unregister_memory(self, vaddr: int, size: int, flags: int = 0) -> None:
        self._spapr().unregister_memory(vaddr, size, flags)

    def iommu_spapr_tce_create(
        self, page_shift: int, window_size: int, levels: int = 1, flags: int = 0
    ) -> int:
        """Returns ``start_addr``."""
        return self._spapr().tce_create(page_shift, window_size, levels, flags)

    def iommu_spapr_tce_remove(self, start_addr: int, flags: int = 0) -> None:
        self._spapr().tce_remove(start_addr, flags)
