"""The lab kernel flavour of the guest images, on a fake build script (no compiler, no QEMU).

The fake script stands for scripts/build-kernel.sh: it writes the directory
layout the real one writes (kernel, config, modules.builtin, release,
selftests, stamp) and prints it, so the image builder's side is tested:
finding the kernel, checking it, packing the selftests, refusing modules the
kernel lacks, reporting a failed build.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from test_guest_cpio import read_newc
from test_guest_elf import make_elf
from test_guest_image import VERSIONS, agent, ppc_packages

from pyctl import debian
from pyctl.guest import GuestBuildError
from pyctl.guest.image import KERNEL_ENV, build_image, default_kernel
from pyctl.guest.labkernel import read_lab_kernel

LAB_VERSIONS = {**VERSIONS, "LINUX_ORIG_VERSION": "6.19.11"}
LAB_REL = "6.19.11-iommulab"
BUILTIN = "kernel/drivers/nvme/host/nvme.ko\nkernel/drivers/nvme/host/nvme-core.ko\n"


def fake_kernel_dir(cache: Path, builtin: str = BUILTIN, selftest: bytes = b"ST1") -> Path:
    d = cache / "kernel" / "ppc64le-6.19.11"
    (d / "selftests").mkdir(parents=True, exist_ok=True)
    banner = f"Linux version {LAB_REL} (iommulab@iommulab) #1 SMP".encode()
    (d / "vmlinux").write_bytes(make_elf({".rodata": banner + b"\0"}, etype=2))
    (d / "config").write_text("CONFIG_IOMMUFD=y\n")
    (d / "modules.builtin").write_text(builtin)
    (d / "release").write_text(LAB_REL + "\n")
    (d / "selftests" / "iommufd").write_bytes(b"\x7fELF iommufd " + selftest)
    (d / "selftests" / "iommufd_fail_nth").write_bytes(b"\x7fELF fail_nth")
    (d / "built").write_text("linux=6.19.11 inputs=abc\nbuilt now in 1s\n")
    return d


def script(tmp: Path, body: str) -> Path:
    s = tmp / "build-kernel.sh"
    s.write_text("#!/bin/bash\nset -e\n" + body)
    return s


def build(tmp: Path, cache: Path, kernel_script: Path, **kw: Any) -> Any:
    lock = debian.read_lock(cache / "guest/debs/test.lock")
    return build_image(
        "ppc64le",
        cache=cache,
        versions=LAB_VERSIONS,
        lock=lock,
        agent_dir=agent(tmp),
        kernel="lab",
        kernel_script=kernel_script,
        **kw,
    )


def test_lab_image_has_the_lab_kernel_the_selftests_and_no_modules(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path)
    kdir = fake_kernel_dir(cache)
    # the script gets the cache through IOMMULAB_CACHE and is asked for the architecture
    s = script(
        tmp_path,
        'echo "$1" > "$IOMMULAB_CACHE/asked"; echo "$IOMMULAB_CACHE/kernel/ppc64le-6.19.11"\n',
    )
    img = build(tmp_path, cache, s)
    assert (cache / "asked").read_text() == "ppc64le\n"
    assert img.flavour == "lab" and img.release == LAB_REL and img.modules == ()
    assert img.directory.name.startswith("ppc64le-lab-")
    assert img.kernel.read_bytes() == (kdir / "vmlinux").read_bytes()
    assert img.banner.startswith(f"Linux version {LAB_REL}")
    assert img.selftests == ("/lib/selftests/iommufd", "/lib/selftests/iommufd_fail_nth")
    members = {m[0]: m for m in read_newc(gzip.decompress(img.initrd.read_bytes()))}
    assert members["lib/selftests/iommufd"][2] == b"\x7fELF iommufd ST1"
    assert members["lib/selftests/iommufd"][1] & 0o777 == 0o755
    assert members["lib/selftests/iommufd_fail_nth"][2] == b"\x7fELF fail_nth"
    assert members["etc/iommulab/modules"][2] == b""
    assert not [m for m in members if m.endswith(".ko")]
    assert members["bin/busybox"][2] == b"\x7fELF fake busybox"
    assert json.loads((img.directory / "manifest.json").read_text())["flavour"] == "lab"


def test_debian_and_lab_images_are_separate_and_a_new_selftest_rebuilds(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path)
    fake_kernel_dir(cache)
    s = script(tmp_path, 'echo "$IOMMULAB_CACHE/kernel/ppc64le-6.19.11"\n')
    lab = build(tmp_path, cache, s)
    assert build(tmp_path, cache, s).directory == lab.directory
    lock = debian.read_lock(cache / "guest/debs/test.lock")
    deb = build_image(
        "ppc64le", cache=cache, versions=LAB_VERSIONS, lock=lock, agent_dir=agent(tmp_path)
    )
    assert deb.flavour == "debian" and deb.directory != lab.directory and deb.modules
    fake_kernel_dir(cache, selftest=b"ST2")
    assert build(tmp_path, cache, s).directory != lab.directory


def test_a_module_not_built_in_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path)
    fake_kernel_dir(cache, builtin="kernel/drivers/nvme/host/nvme-core.ko\n")
    s = script(tmp_path, 'echo "$IOMMULAB_CACHE/kernel/ppc64le-6.19.11"\n')
    with pytest.raises(GuestBuildError, match=r"nvme: not built into the lab kernel"):
        build(tmp_path, cache, s)
    assert not list((cache / "guest" / "images").glob("ppc64le-lab-*"))


def test_a_failed_kernel_build_is_reported_with_its_output(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path)
    s = script(tmp_path, 'echo "error: Kconfig did not keep CONFIG_X" >&2; exit 1\n')
    with pytest.raises(GuestBuildError, match=r"(?s)build-kernel.sh ppc64le failed.*CONFIG_X"):
        build(tmp_path, cache, s)


def test_a_build_elsewhere_or_incomplete_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path)
    with pytest.raises(GuestBuildError, match="built /elsewhere, expected"):
        build(tmp_path, cache, script(tmp_path, "echo /elsewhere\n"))
    kdir = fake_kernel_dir(cache)
    (kdir / "selftests" / "iommufd_fail_nth").unlink()
    ok = script(tmp_path, 'echo "$IOMMULAB_CACHE/kernel/ppc64le-6.19.11"\n')
    with pytest.raises(GuestBuildError, match="iommufd_fail_nth: missing"):
        build(tmp_path, cache, ok)
    (kdir / "built").unlink()
    with pytest.raises(GuestBuildError, match=r"run scripts/build-kernel\.sh ppc64le"):
        read_lab_kernel(kdir, "ppc64le")


def test_the_flavour_comes_from_the_environment_and_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    assert default_kernel() == "debian"
    monkeypatch.setenv(KERNEL_ENV, "lab")
    assert default_kernel() == "lab"
    monkeypatch.setenv(KERNEL_ENV, "custom")
    with pytest.raises(GuestBuildError, match=f"{KERNEL_ENV}=custom: expected one of debian, lab"):
        build_image("ppc64le", cache=tmp_path, versions=LAB_VERSIONS, agent_dir=agent(tmp_path))
    with pytest.raises(GuestBuildError, match="kernel 'x': expected one of debian, lab"):
        build_image("ppc64le", cache=tmp_path, agent_dir=agent(tmp_path), kernel="x")
