"""scripts/bench-lab.py end to end on a tiny plan: two q35 boots (no IOMMU, iommulab
stage 2), one round, small sizes; the JSON, the page and the charts it writes.  About
30-60 s (two TCG boots); no figure is compared with anything."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from testvm import needs_viommu

REPO = Path(__file__).resolve().parents[2]


@needs_viommu
def test_tiny_run_writes_results_page_and_charts(tmp_path: Path) -> None:
    out, doc = tmp_path / "run.json", tmp_path / "docs/performance.md"
    doc.parent.mkdir()
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "scripts/bench-lab.py"),
            "--config", "q35-none", "--config", "q35-lab-s2", "--rounds", "1",
            "--size-1m", "4M", "--size-4k", "1M", "--reads", "4",
            "--skip", "core,dma,control", "--json", str(out), "--doc", str(doc),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    samples = {s["config"]: s for s in data["samples"]}
    assert set(samples) == {"q35-none", "q35-lab-s2"}
    for s in samples.values():
        assert s["error"] is None, s["error"]
        assert s["metrics"]["read_1m"] > 0 and s["metrics"]["write_4k"] > 0
        assert len(s["load_before"]) == 3 and len(s["load_after"]) == 3
    # the lab's NVMe DMA went through the stage-2 domain, without faults
    lab = samples["q35-lab-s2"]["evidence"]
    assert lab["lab_counters"]["hits"] + lab["lab_counters"]["walks"] > 0
    assert lab["nvme_faults"] == 0
    # no IOMMU group in either guest (the lab's vIOMMU is invisible to it)
    assert {s["evidence"]["guest_iommu_domain"] for s in samples.values()} == {None}
    page = doc.read_text()
    assert "| no IOMMU | **" in page and "| iommulab stage 2 | **" in page
    for name in ("perf-q35-ratio.svg", "perf-q35-mibs.svg"):
        assert f"(img/{name})" in page
        ET.parse(doc.parent / "img" / name)
