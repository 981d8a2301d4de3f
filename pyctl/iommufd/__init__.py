"""The Linux iommufd object model (IOAS, HWPT, DEVICE) programming a vIOMMU backend."""

from .backend import (
    DeviceHwInfo,
    HardwareBackend,
    HwState,
    MapEntry,
    ResvRegion,
    SpaprPeInfo,
    Translation,
    Window,
    WindowBackend,
    WindowCaps,
)
from .context import (
    IOMMULAB_INV_ALL,
    IommufdContext,
    IommulabHwptData,
    IommulabInvalidateEntry,
    IovaRanges,
    ModelOptions,
    WindowChange,
)
from .errors import BackendError, IommufdError
from .memory_backend import X86_MSI_WINDOW, InMemoryBackend, x86_device
from .rebuild import RebuildError
from .uapi import FIXED_IOVA, NEST_PARENT, READABLE, U64_MAX, WRITEABLE

__all__ = [
    "FIXED_IOVA",
    "IOMMULAB_INV_ALL",
    "NEST_PARENT",
    "READABLE",
    "U64_MAX",
    "WRITEABLE",
    "X86_MSI_WINDOW",
    "BackendError",
    "DeviceHwInfo",
    "HardwareBackend",
    "HwState",
    "InMemoryBackend",
    "IommufdContext",
    "IommufdError",
    "IommulabHwptData",
    "IommulabInvalidateEntry",
    "IovaRanges",
    "MapEntry",
    "ModelOptions",
    "RebuildError",
    "ResvRegion",
    "SpaprPeInfo",
    "Translation",
    "Window",
    "WindowBackend",
    "WindowCaps",
    "WindowChange",
    "x86_device",
]
