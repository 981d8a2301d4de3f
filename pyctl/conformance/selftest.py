"""The selftest's mock-device ioctls on the model (drivers/iommu/iommufd/selftest.c).

IOMMU_TEST_OP_MOCK_DOMAIN creates a SELFTEST object, a mock device bound to
the context (a DEVICE object) and attaches it; MOCK_DOMAIN_REPLACE moves it;
IOMMU_DESTROY of the SELFTEST object detaches and unbinds it.  Like
selftest.c, which reaches into iommufd_private.h, this module works on the
context's internals (the object table, device.py), in the kernel's order, so
the ids come out as the kernel allocates them.
"""

from __future__ import annotations

from pyctl.iommufd import IommufdContext, IommufdError, device
from pyctl.iommufd.objects import Selftest
from pyctl.iommufd.objtable import Ictx
from pyctl.iommufd.uapi import ObjType, u32

from .mockhw import MockHardware


class SelftestOps:
    """The mock-device half of IOMMU_TEST_CMD for one model context."""

    def __init__(self, ctx: IommufdContext, hw: MockHardware) -> None:
        self.ctx = ctx
        self.hw = hw
        self.ictx: Ictx = ctx._ictx  # selftest.c's view: iommufd_private.h
        self.ictx.table.register_destroy(ObjType.SELFTEST, self._destroy)

    def mock_domain(self, pt_id: int) -> tuple[int, int, int]:
        """iommufd_test_mock_domain(): (stdev_id, hwpt_id, idev_id)."""
        pt = u32("pt_id", pt_id)
        table = self.ictx.table
        sobj = Selftest(table.new_id())  # iommufd_object_alloc(): the id is taken now
        table.add(sobj)
        name = self.hw.new_device()  # mock_dev_create()
        try:
            if self.hw.facts.mock_errno is not None:  # the kernel cannot bind its mock device
                raise IommufdError(self.hw.facts.mock_errno, "no mock device on this kernel")
            dev_id = device.bind(self.ictx, self.hw.device_info(name))
            try:
                if pt == sobj.id:  # not finalized yet: iommufd_get_object() cannot see it
                    raise IommufdError("ENOENT", f"no object with id {pt}")
                hwpt = device.change_pt(self.ictx, self.ictx.dev(dev_id), pt, replace=False)
            except IommufdError:
                self._unbind(dev_id)  # out_unbind
                raise
        except IommufdError:
            self.hw.remove_device(name)  # out_mdev
            table.forget(sobj.id)  # out_sobj: iommufd_object_abort()
            raise
        sobj.dev_id = dev_id
        return sobj.id, hwpt, dev_id

    def replace(self, stdev_id: int, pt_id: int) -> int:
        """iommufd_test_mock_domain_replace(): ENOENT unless a SELFTEST object."""
        sobj = self.ictx.table.get(stdev_id, Selftest, "SELFTEST")
        assert sobj.dev_id is not None
        return device.change_pt(self.ictx, self.ictx.dev(sobj.dev_id), pt_id, replace=True)

    def _unbind(self, dev_id: int) -> None:
        """iommufd_device_unbind()."""
        dev = self.ictx.dev(dev_id)
        del self.ictx.by_name[dev.name]
        self.ictx.table.forget(dev.id)

    def _destroy(self, obj: object) -> None:
        """selftest_object_destroy(): detach, unbind, destroy the mock device."""
        assert isinstance(obj, Selftest) and obj.dev_id is not None
        dev = self.ictx.dev(obj.dev_id)
        if dev.hwpt_id is not None:
            device.detach(self.ictx, dev)
        self._unbind(dev.id)
        self.hw.remove_device(dev.name)
