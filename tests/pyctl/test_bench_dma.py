"""pyctl.bench.dma against the built QEMU: one 4 KiB edu DMA under callgrind through
QEMU's intel-iommu, programmed from qtest (root, context and a 4-level table mapping an
IOVA that differs from the page), so the bytes come back only if it translated."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from testvm import needs_viommu, qemu_binary

from pyctl.bench.dma import q35_dma_instructions


def no_stage1(size: int, base: int) -> bytes:
    raise AssertionError("the intel-iommu set-up needs no iommulab stage-1 table")


@needs_viommu
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_one_dma_through_intel_iommu_is_counted() -> None:
    binary = qemu_binary()
    assert isinstance(binary, Path)
    # raises if the DMA did not run or the page did not come back through the IOVA
    n = q35_dma_instructions(binary, "intel", no_stage1, dmas=3)
    assert n > 100
    with pytest.raises(ValueError, match="mode 'smmu'"):
        q35_dma_instructions(binary, "smmu", no_stage1)
