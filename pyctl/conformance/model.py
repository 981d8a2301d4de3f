"""The model side of the differential run: each runner operation on an IommufdContext.

The model's "phys" of an IOAS map is the runner's user address (its buffers
sit at fixed addresses, :class:`~pyctl.conformance.protocol.Hello`).  Two
translations, both documented in docs/iommufd.md: the selftest's nested data
type (IOMMU_HWPT_DATA_SELFTEST with ``struct iommu_hwpt_selftest``) is the
model's driver data (IOMMU_HWPT_DATA_IOMMULAB), and GET_HW_INFO answers the
type the kernel reported for its mock devices.
"""

from __future__ import annotations

from typing import cast

from pyctl.iommufd import IommufdContext, IommufdError, IommulabHwptData, ModelOptions
from pyctl.iommufd.objects import Ioas
from pyctl.iommufd.uapi import HwptAllocFlags, HwptDataType

from .mockhw import MockFacts, MockHardware
from .protocol import Answer, Hello, Op, Src
from .selftest import SelftestOps

#: include/uapi/linux/iommufd.h has no selftest type; iommufd_test.h's value
IOMMU_HWPT_DATA_SELFTEST = 0xDEAD
HWPT_ALLOC_PASID = int(HwptAllocFlags.IOMMU_HWPT_ALLOC_PASID)
NEST_PARENT = int(HwptAllocFlags.IOMMU_HWPT_ALLOC_NEST_PARENT)
#: the model driver's refusal of a paging HWPT's data (pyctl/iommufd/hw_pagetable.py),
#: at the point where the kernel calls the driver's domain_alloc_paging_flags()
PAGING_NO_DATA = "paging HWPT takes no driver data"
#: the runner's struct iommu_hwpt_selftest: its iotlb, the least the kernel reads
SELFTEST_DATA_LEN = 4


def kernel_options(facts: MockFacts) -> ModelOptions:
    """The model with the kernel's behaviour where it differs by choice (docs/iommufd.md,
    "Deliberate differences"), and the kernel's page and THP sizes and IOVA cap."""
    return ModelOptions(
        atomic_unmap=False,
        pin_per_guest_page=False,
        max_iova_alignment=facts.iova_cap or facts.hpage_size or facts.page_size,
        page_size=facts.page_size,
    )


class ModelSide:
    """Runs :class:`Op` s on the model, answering as the runner does."""

    def __init__(self, facts: MockFacts, hello: Hello) -> None:
        self.facts = facts
        self.hello = hello
        self.ctx: IommufdContext | None = None
        self.hw: MockHardware | None = None
        self.selftest: SelftestOps | None = None

    def new_context(self) -> None:
        self.hw = MockHardware(self.facts)
        self.ctx = IommufdContext(self.hw, options=kernel_options(self.facts))
        self.selftest = SelftestOps(self.ctx, self.hw)

    def run(self, op: Op) -> Answer:
        if op.name == "S":
            self.new_context()
            return Answer(None)
        if self.ctx is None:
            raise RuntimeError("no model context: run S first")
        try:
            return Answer(None, self._call(op))
        except IommufdError as e:
            if e.errno == "EMSGSIZE" and "num_iovas" in e.data:
                return Answer(e.errno, (int(e.data["num_iovas"]),))
            return Answer(e.errno)

    def _src(self, a: int | Src) -> int:
        return self.hello.va(a) if isinstance(a, Src) else a

    def _call(self, op: Op) -> tuple[int, ...]:
        assert self.ctx is not None and self.selftest is not None
        ctx, a = self.ctx, op.args
        n = [x if isinstance(x, int) else 0 for x in a]
        match op.name:
            case "ia":
                return (ctx.ioas_alloc(n[0]),)
            case "d":
                ctx.destroy(n[0])
                return ()
            case "m":
                return (ctx.ioas_map(n[0], self._src(a[3]), n[4], n[1], n[2]),)
            case "u":
                return (ctx.ioas_unmap(n[0], n[1], n[2]),)
            case "c":
                return (ctx.ioas_copy(n[0], n[2], n[3], n[4], n[5], n[1]),)
            case "r":
                return self._ranges(n[0], n[1])
            case "a":
                ctx.ioas_allow_iovas(n[0], [(n[2 + 2 * i], n[3 + 2 * i]) for i in range(n[1])])
                return ()
            case "o":
                return (ctx.option(n[0], n[1], n[2], n[3]),)
            case "h":
                return (self._hwpt_alloc(n[0], n[1], n[2], n[3], n[4], n[5]),)
            case "md":
                return self.selftest.mock_domain(n[0])
            case "mr":
                return (self.selftest.replace(n[0], n[1]),)
            case "gi":
                ctx.get_hw_info(n[0])  # ENOENT
                return (self.facts.hw_info_type,)
        raise ValueError(f"the model cannot run {op.name!r}")

    def _ranges(self, ioas: int, num: int) -> tuple[int, ...]:
        assert self.ctx is not None
        r = self.ctx.ioas_iova_ranges(ioas, num)
        flat = [x for rng in r.ranges for x in rng]
        return (r.alignment, len(r.ranges), *flat)

    def _hwpt_alloc(
        self, dev: int, pt: int, flags: int, data_type: int, data_len: int, iotlb: int
    ) -> int:
        """HWPT_ALLOC with the selftest's data: its type is the model's driver type, and
        ``struct iommu_hwpt_selftest`` shorter than its iotlb or longer than the kernel's
        struct (EINVAL in iommu_copy_struct_from_user()) is driver data the model's
        driver refuses (EINVAL).  The mock driver's 6.19 additions (the facts say
        whether the kernel has them) are translated to what the model has."""
        assert self.ctx is not None
        data: IommulabHwptData | None = None
        if SELFTEST_DATA_LEN <= data_len <= self.facts.selftest_data_len:
            data = IommulabHwptData(0, self._s1_ias(dev))
        elif data_len:
            data = cast(IommulabHwptData, bytes(data_len))  # not the driver's type: EINVAL
        if self.facts.pasid_flag:
            # a kernel whose mock driver allows PASID-compatible HWPTs (6.19): the flag
            # changes nothing the run can see (no PASID attaches); the model has none
            flags &= ~HWPT_ALLOC_PASID
        dt = data_type
        if data_type == IOMMU_HWPT_DATA_SELFTEST:
            dt = HwptDataType.IOMMU_HWPT_DATA_IOMMULAB
            if self.facts.paging_data and self._is_ioas(pt):
                # a kernel whose mock driver reads the data of a paging HWPT (6.19):
                # the runner's zeroed pagetable_type asks for the default mock page
                # table, the one a paging HWPT without data gets
                none = HwptDataType.IOMMU_HWPT_DATA_NONE
                if isinstance(data, IommulabHwptData):
                    return self.ctx.hwpt_alloc(dev, pt, flags, none, None)
                # data of a wrong length: the driver's copy refuses it (EINVAL) after
                # every check before the driver, which is where the model's driver
                # refuses any paging data
                try:
                    return self.ctx.hwpt_alloc(dev, pt, flags, dt, data)
                except IommufdError as e:
                    if e.errno == "EOPNOTSUPP" and e.message == PAGING_NO_DATA:
                        raise IommufdError("EINVAL", f"selftest data of {data_len} bytes") from e
                    raise
        return self.ctx.hwpt_alloc(dev, pt, flags, dt, data)

    def _is_ioas(self, pt: int) -> bool:
        assert self.ctx is not None
        return isinstance(self.ctx.objects().get(pt), Ioas)

    def _s1_ias(self, dev: int) -> int:
        assert self.ctx is not None
        try:
            return self.ctx.get_hw_info(dev).s1_ias
        except IommufdError:
            return 48  # no such device: hwpt_alloc answers ENOENT before it reads data
