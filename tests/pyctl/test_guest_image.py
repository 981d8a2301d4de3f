"""The image builder end to end on small fake Debian packages (no network, no QEMU)."""

from __future__ import annotations

import gzip
import json
import lzma
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_guest_cpio import read_newc
from test_guest_elf import EM_X86_64, make_elf, module

from pyctl import debian
from pyctl.guest import GuestBuildError
from pyctl.guest.arches import ARCHES, get_arch
from pyctl.guest.debs import Package, download, read_versions
from pyctl.guest.image import agent_files, build_image, image_key

REL = "6.12.107+deb13-powerpc64le"
VERSIONS = {
    "LINUX_ABI": "6.12.107+deb13",
    "LINUX_VERSION": "6.12.107-1",
    "BUSYBOX_VERSION": "1:1.37.0-6+b9",
}


def fake_deb(root: Path, pkg: Package, files: dict[str, bytes], out: Path) -> None:
    """A .deb in ``out`` whose pin goes into ``out/test.lock`` (read by :func:`build`)."""
    tree = root / f"{pkg.name}-{pkg.arch}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {pkg.name}\nVersion: {pkg.version}\nArchitecture: {pkg.arch}\n"
        "Maintainer: test <t@example.org>\nDescription: fake\n"
    )
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{pkg.name}_{pkg.version.split(':')[-1]}_{pkg.arch}.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--build", str(tree), str(out / name)],
        check=True,
        capture_output=True,
    )
    deb = out / name
    pin = debian.Pin(
        pkg.name, pkg.arch, pkg.version, deb.stat().st_size, debian.sha256_file(deb),
        f"pool/main/f/fake/{name}",
    )  # fmt: skip
    with (out / "test.lock").open("a") as lock:
        lock.write(pin.line() + "\n")


def build(arch: str, cache: Path, **kw: Any) -> Any:
    """build_image with the pins of the fake packages (no download: they are in the cache)."""
    lock = debian.read_lock(cache / "guest/debs/test.lock")
    return build_image(arch, cache=cache, versions=VERSIONS, lock=lock, **kw)


def ppc_packages(cache: Path, tmp: Path, mod_release: str = REL) -> None:
    kernel, busybox = get_arch("ppc64le").packages(VERSIONS)
    banner = f"Linux version {REL} (fake) #1 SMP".encode()
    mods = f"usr/lib/modules/{REL}/kernel/drivers/nvme/host"
    fake_deb(
        tmp,
        kernel,
        {
            f"boot/vmlinux-{REL}": make_elf({".rodata": banner + b"\0"}, etype=2),
            f"{mods}/nvme.ko.xz": lzma.compress(module("nvme", "nvme-core", release=mod_release)),
            f"{mods}/nvme-core.ko.xz": lzma.compress(module("nvme-core", release=mod_release)),
            f"usr/lib/modules/{REL}/modules.builtin": b"kernel/drivers/hwmon/hwmon.ko\n",
        },
        cache / "guest/debs",
    )
    fake_deb(tmp, busybox, {"usr/bin/busybox": b"\x7fELF fake busybox"}, cache / "guest/debs")


def agent(tmp: Path, text: str = "#!/bin/sh\necho agent\n") -> Path:
    d = tmp / "agent"
    d.mkdir(exist_ok=True)
    (d / "init").write_text(text)
    return d


def test_image_is_built_checked_and_packed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path)
    img = build("ppc64le", cache, agent_dir=agent(tmp_path))
    assert img.release == REL and img.modules == ("nvme_core", "nvme")
    assert img.banner.startswith(f"Linux version {REL}")
    assert img.kernel.read_bytes()[:4] == b"\x7fELF"
    members = {m[0]: m for m in read_newc(gzip.decompress(img.initrd.read_bytes()))}
    assert members["init"][2] == b"#!/bin/sh\necho agent\n"
    assert members["bin/busybox"][2] == b"\x7fELF fake busybox"
    assert members["bin/sh"][2] == b"busybox"
    assert members["dev/console"][3] == (5, 1)
    assert members["etc/iommulab/modules"][2] == f"{REL}/nvme_core\n{REL}/nvme\n".encode()
    assert members[f"lib/modules/{REL}/nvme.ko"][2][:4] == b"\x7fELF"
    manifest = json.loads((img.directory / "manifest.json").read_text())
    assert manifest["modules"] == ["nvme_core", "nvme"]


def test_unchanged_inputs_reuse_the_image_and_a_changed_agent_rebuilds(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path)
    a = agent(tmp_path)
    first = build("ppc64le", cache, agent_dir=a)
    mtime = first.initrd.stat().st_mtime_ns
    again = build("ppc64le", cache, agent_dir=a)
    assert again.directory == first.directory and again.initrd.stat().st_mtime_ns == mtime
    (a / "init").write_text("#!/bin/sh\necho changed\n")
    changed = build("ppc64le", cache, agent_dir=a)
    assert changed.directory != first.directory
    members = {m[0]: m for m in read_newc(gzip.decompress(changed.initrd.read_bytes()))}
    assert members["init"][2] == b"#!/bin/sh\necho changed\n"


def test_key_depends_on_versions_modules_and_agent(tmp_path: Path) -> None:
    arch = get_arch("ppc64le")
    files = {"init": b"x"}
    base = image_key(arch, VERSIONS, ("nvme",), files)
    assert image_key(arch, VERSIONS, ("nvme",), dict(files)) == base
    assert image_key(arch, {**VERSIONS, "LINUX_VERSION": "6.12.108-1"}, ("nvme",), files) != base
    assert image_key(arch, VERSIONS, ("nvme", "virtio_blk"), files) != base
    assert image_key(arch, VERSIONS, ("nvme",), {"init": b"y"}) != base
    assert image_key(get_arch("x86_64"), VERSIONS, ("nvme",), files) != base


def test_vermagic_mismatch_stops_the_build_and_leaves_no_image(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path, mod_release="6.1.0-99-powerpc64le")
    with pytest.raises(GuestBuildError, match="vermagic mismatch"):
        build("ppc64le", cache, agent_dir=agent(tmp_path))
    images = cache / "guest/images"
    assert not images.exists() or not any(images.iterdir())


def test_wrong_kernel_machine_stops_the_build(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kernel, busybox = get_arch("ppc64le").packages(VERSIONS)
    fake_deb(
        tmp_path,
        kernel,
        {
            f"boot/vmlinux-{REL}": make_elf(
                {".rodata": f"Linux version {REL} (x)".encode()}, machine=EM_X86_64, etype=2
            ),
        },
        cache / "guest/debs",
    )
    fake_deb(tmp_path, busybox, {"usr/bin/busybox": b"bb"}, cache / "guest/debs")
    with pytest.raises(GuestBuildError, match="EM_X86_64"):
        build("ppc64le", cache, agent_dir=agent(tmp_path))


def test_missing_agent_and_unknown_arch(tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match="init missing"):
        agent_files(tmp_path)
    with pytest.raises(GuestBuildError, match="unknown guest architecture 'arm64'"):
        build_image("arm64", cache=tmp_path, versions=VERSIONS)


def test_package_names_and_files() -> None:
    kernel, busybox = ARCHES["x86_64"].packages(VERSIONS)
    assert kernel.spec == "linux-image-6.12.107+deb13-amd64-unsigned:amd64=6.12.107-1"
    assert busybox.spec == "busybox-static:amd64=1:1.37.0-6+b9"
    with pytest.raises(GuestBuildError, match="lacks LINUX_ABI"):
        ARCHES["ppc64le"].packages({})


def test_versions_env_is_read(tmp_path: Path) -> None:
    repo = read_versions()
    assert repo["LINUX_ABI"] and repo["BUSYBOX_VERSION"]
    bad = tmp_path / "v.env"
    bad.write_text('# comment\nA="1"\nthis is not an assignment\n')
    with pytest.raises(GuestBuildError, match="cannot parse"):
        read_versions(bad)


def test_unpinned_package_is_a_clear_error(tmp_path: Path) -> None:
    pkg = Package("iommulab-no-such-package", "1.0", "amd64")
    with pytest.raises(
        GuestBuildError, match=r"iommulab-no-such-package 1.0 \(amd64\) is not pinned"
    ):
        download([pkg], tmp_path)
    assert not list(tmp_path.iterdir())


def test_every_pinned_version_is_in_the_lock() -> None:
    """versions.env and debian.lock agree (a version bump needs `pyctl.debian lock`)."""
    pins = debian.read_lock()
    for name, arch, version, _suite in debian.wanted(debian.read_versions()):
        debian.find_pin(pins, name, arch, version)
    for arch in get_arch("ppc64le"), get_arch("x86_64"):
        for pkg in arch.packages(read_versions()):
            debian.find_pin(pins, pkg.name, pkg.arch, pkg.version)


def test_parallel_builds_share_one_image(tmp_path: Path) -> None:
    """Boot tests run in parallel: concurrent builders of one image must all get it whole."""
    from concurrent.futures import ProcessPoolExecutor

    cache = tmp_path / "cache"
    ppc_packages(cache, tmp_path)
    a = agent(tmp_path)
    with ProcessPoolExecutor(4) as pool:
        images = list(pool.map(_build_in_child, [(cache, a)] * 4))
    assert len({img.initrd for img in images}) == 1
    assert all(img.initrd.exists() and img.kernel.exists() for img in images)
    assert [p.name for p in (cache / "guest/images").iterdir()] == [images[0].initrd.parent.name]


def _build_in_child(args: tuple[Path, Path]) -> Any:
    cache, agent_dir = args
    return build("ppc64le", cache, agent_dir=agent_dir)
