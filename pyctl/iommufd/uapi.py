"""Constants of the Linux iommufd uAPI (include/uapi/linux/iommufd.h) the model follows.

Names are the kernel's.  Values that the kernel leaves to drivers (the
driver-specific HWPT data types) are the project's own and marked so.
"""

from __future__ import annotations

import enum

from .errors import IommufdError

U64_MAX = (1 << 64) - 1
#: ULONG_MAX on a 64-bit kernel; iova/length equal to or above it give EOVERFLOW.
ULONG_MAX = U64_MAX
PAGE_SIZE = 4096
PAGE_SHIFT = 12


class IoasMapFlags(enum.IntFlag):
    IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
    IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
    IOMMU_IOAS_MAP_READABLE = 1 << 2


FIXED_IOVA = IoasMapFlags.IOMMU_IOAS_MAP_FIXED_IOVA
WRITEABLE = IoasMapFlags.IOMMU_IOAS_MAP_WRITEABLE
READABLE = IoasMapFlags.IOMMU_IOAS_MAP_READABLE
MAP_FLAGS_VALID = int(FIXED_IOVA | WRITEABLE | READABLE)


class HwptAllocFlags(enum.IntFlag):
    IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
    IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
    IOMMU_HWPT_ALLOC_PASID = 1 << 3


NEST_PARENT = HwptAllocFlags.IOMMU_HWPT_ALLOC_NEST_PARENT
#: Flags this model's hardware supports for a paging HWPT.
HWPT_PAGING_FLAGS_SUPPORTED = int(NEST_PARENT)
HWPT_FLAGS_KNOWN = int(
    HwptAllocFlags.IOMMU_HWPT_ALLOC_NEST_PARENT
    | HwptAllocFlags.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
    | HwptAllocFlags.IOMMU_HWPT_FAULT_ID_VALID
    | HwptAllocFlags.IOMMU_HWPT_ALLOC_PASID
)


class HwptDataType(enum.IntEnum):
    IOMMU_HWPT_DATA_NONE = 0
    IOMMU_HWPT_DATA_VTD_S1 = 1
    IOMMU_HWPT_DATA_ARM_SMMUV3 = 2
    #: project-specific: stage-1 table of the iommulab paging vIOMMU
    IOMMU_HWPT_DATA_IOMMULAB = 0x1AB0


class HwptInvalidateDataType(enum.IntEnum):
    IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0
    IOMMU_HWPT_INVALIDATE_DATA_ARM_SMMUV3 = 1
    #: project-specific
    IOMMU_HWPT_INVALIDATE_DATA_IOMMULAB = 0x1AB0


class OptionId(enum.IntEnum):
    IOMMU_OPTION_RLIMIT_MODE = 0
    IOMMU_OPTION_HUGE_PAGES = 1


class OptionOp(enum.IntEnum):
    IOMMU_OPTION_OP_SET = 0
    IOMMU_OPTION_OP_GET = 1


class ObjType(enum.Enum):
    IOAS = "IOAS"
    HWPT_PAGING = "HWPT_PAGING"
    HWPT_NESTED = "HWPT_NESTED"
    DEVICE = "DEVICE"
    #: IOMMUFD_OBJ_SELFTEST: a mock device of the kernel's selftest (pyctl.conformance)
    SELFTEST = "SELFTEST"


def u64(name: str, v: object) -> int:
    """A ``__u64`` field: a Python caller can pass anything, the ioctl struct cannot."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise IommufdError("EINVAL", f"{name} must be an integer, not {type(v).__name__}")
    if not 0 <= v <= U64_MAX:
        raise IommufdError("EINVAL", f"{name} {v} does not fit a __u64")
    return v


def u32(name: str, v: object) -> int:
    """A ``__u32`` field."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise IommufdError("EINVAL", f"{name} must be an integer, not {type(v).__name__}")
    if not 0 <= v < (1 << 32):
        raise IommufdError("EINVAL", f"{name} {v} does not fit a __u32")
    return v
