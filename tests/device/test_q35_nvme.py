"""q35 guest boots with its NVMe behind iommulab-viommu: stage-2 identity, then
nested (stage-1 identity in reserved guest memory over stage-2 identity), and
runs nvme-rw.  Needs the built QEMU and the x86_64 guest image (built and cached
by pyctl.guest on first use); slow (a guest boot each)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import qemu_binary
from q35boot import boot

from pyctl.guest.results import Scenario

SCENARIOS = [Scenario("nvme-probe"), Scenario("nvme-rw", {"size": "16M"})]


def sha256_prefix(path: Path, size: int) -> str:
    return hashlib.sha256(path.read_bytes()[:size]).hexdigest()


@pytest.mark.parametrize("mode", ["stage2", "nested"])
def test_q35_nvme_rw_through_viommu(tmp_path: Path, mode: str) -> None:
    qemu_binary()
    r = boot(tmp_path, mode, SCENARIOS)
    assert r.error is None, f"{r.error} (console: {r.console})"
    assert r.results and all(x.get("ok") is True for x in r.results), r.results
    rw = r.result("nvme-rw")
    assert rw["size"] == 16 << 20
    assert sha256_prefix(tmp_path / "nvme.raw", rw["size"]) == rw["sha256_written"]
    assert r.counters is not None
    # the NVMe's DMA went through the tables and nothing of it faulted
    assert r.counters["walks"] > 0 and r.counters["hits"] > 0
    assert [f for f in r.faults if f["device"].endswith("/nvme0")] == []
