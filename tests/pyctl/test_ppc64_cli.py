"""`iommulab windows` and `iommulab picture --phb` show host and guest windows live."""

from __future__ import annotations

import io
import json
import struct

import pytest
from testvm import PseriesVm, needs_ppc64

from pyctl import cli
from pyctl.iommufd import IommufdContext
from pyctl.iommufd.ppc64 import IOMMU_HWPT_DATA_PPC64_DMA_WINDOW as PPC64_WIN
from pyctl.iommufd.ppc64 import Ppc64DmaWindow
from pyctl.iommufd.spapr_qmp import SpaprQmpBackend

pytestmark = needs_ppc64
DDW = 1 << 59
ARGS, RETS = 0x4000000, 0x4001000


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(argv, out), out.getvalue()


def test_windows_and_picture_of_host_and_guest_windows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with PseriesVm() as vm:
        sock = str(vm.qmp_path)
        be = SpaprQmpBackend(sock)  # QEMU's socket takes one client: closed before the CLI
        ctx = IommufdContext(be)
        d1 = ctx.bind("edu1")
        ioas = ctx.ioas_alloc()
        h = ctx.hwpt_alloc(d1, ioas, 0, PPC64_WIN, Ppc64DmaWindow(1 << 24, 16, bus_offset=DDW))
        ctx.attach(d1, h)
        ctx.ioas_map(ioas, 0x1000000, 0x20000, 7, iova=DDW + 0x10000)
        # the guest's DDW on PHB 0 (RTAS through qtest)
        buid = next(p["buid"] for p in be.phbs() if p["phb"] == 0)
        args = [buid >> 32, buid & 0xFFFFFFFF, 16, 28]
        vm.qt.memwrite(ARGS, b"".join(struct.pack(">I", a) for a in [0, *args]))
        vm.qt.command(f"rtas ibm,create-pe-dma-window 5 0x{ARGS:x} 4 0x{RETS:x}")
        assert struct.unpack(">I", vm.qt.memread(RETS, 4))[0] == 0
        be.close()  # the windows and TCEs stay on the device
        rc, text = _run(["--qmp", sock, "--json", "windows", "--phb", "0"])
        assert rc == 0
        assert [(w["bus-offset"], w["owner"]) for w in json.loads(text)["windows"]] == [
            (0, "host"), (DDW, "guest")]  # fmt: skip
        rc, text = _run(["--qmp", sock, "windows", "--phb", "1"])
        assert rc == 0 and "host" in text and "guest" not in text
        svg0, svg1 = vm.workdir / "phb0.svg", vm.workdir / "phb1.svg"
        assert _run(["--qmp", sock, "picture", "--phb", "0", "-o", str(svg0)])[0] == 0
        assert _run(["--qmp", sock, "picture", "--phb", "1", "-o", str(svg1)])[0] == 0
        assert "guest windows" in svg0.read_text() and "256M/64K" in svg0.read_text()
        s1 = svg1.read_text()
        assert "16M/64K" in s1 and "TCEs in use" in s1
        with SpaprQmpBackend(sock) as be2:  # BLOCKED: the picture says so
            be2.set_blocked(1, True)
        assert _run(["--qmp", sock, "picture", "--phb", "1", "-o", str(svg1)])[0] == 0
        assert "BLOCKED" in svg1.read_text()
        assert _run(["--qmp", sock, "picture", "-o", str(svg1)])[0] == 1
        assert "--domain D" in capsys.readouterr().err
        assert _run(["--qmp", sock, "picture", "--phb", "7", "-o", str(svg1)])[0] == 1
        assert "no PHB 7" in capsys.readouterr().err
