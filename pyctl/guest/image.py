"""Build (or reuse) a guest image: kernel + initramfs with modules, busybox and the agent.

Images live in ``<cache>/guest/images/<arch>-<key>/``; the key hashes every
input (pinned versions, module list, agent files, builder format), so a
changed input gives a new image and an unchanged one is reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from pyctl.debian import Pin
from pyctl.guest import GuestBuildError, cpio
from pyctl.guest.arches import GuestArch, get_arch
from pyctl.guest.debs import REPO, download, extract, read_versions
from pyctl.guest.kernel import bzimage_banner, vmlinux_banner
from pyctl.guest.modules import ModuleTree, ResolvedModule

AGENT_DIR = REPO / "guest" / "agent"
DEFAULT_MODULES = ("nvme",)
FORMAT = 1  # bump when the image layout changes


def cache_root() -> Path:
    env = os.environ.get("IOMMULAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iommulab"


@dataclass(frozen=True)
class GuestImage:
    arch: str
    release: str
    kernel: Path
    initrd: Path
    banner: str
    modules: tuple[str, ...]  # load order
    directory: Path

    def to_json(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "release": self.release,
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "banner": self.banner,
            "modules": list(self.modules),
        }


def agent_files(agent_dir: Path = AGENT_DIR) -> dict[str, bytes]:
    """The agent's files, relative path -> contents."""
    if not (agent_dir / "init").is_file():
        raise GuestBuildError(f"{agent_dir}/init missing: the guest agent is part of the repo")
    return {
        str(p.relative_to(agent_dir)): p.read_bytes()
        for p in sorted(agent_dir.rglob("*"))
        if p.is_file()
    }


def image_key(
    arch: GuestArch, versions: dict[str, str], modules: tuple[str, ...], agent: dict[str, bytes]
) -> str:
    h = hashlib.sha256()
    kernel, busybox = arch.packages(versions)
    h.update(
        json.dumps(
            {
                "format": FORMAT,
                "arch": arch.name,
                "kernel": kernel.spec,
                "busybox": busybox.spec,
                "abi": versions["LINUX_ABI"],
                "modules": list(modules),
            },
            sort_keys=True,
        ).encode()
    )
    for name, data in agent.items():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def build_initramfs(
    busybox: bytes, agent: dict[str, bytes], modules: list[ResolvedModule], release: str
) -> cpio.Archive:
    """The initramfs archive (uncompressed form) for the given parts."""
    arc = cpio.Archive()
    for d in (
        "bin",
        "dev",
        "etc",
        "etc/iommulab",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
        f"lib/modules/{release}",
    ):
        arc.add(cpio.directory(d))
    # The kernel opens /dev/console for init before anything is mounted.
    arc.add(cpio.chardev("dev/console", 5, 1))
    arc.add(cpio.regular("bin/busybox", busybox, 0o755))
    arc.add(cpio.symlink("bin/sh", "busybox"))
    arc.add(cpio.regular("init", agent["init"], 0o755))
    for name in agent:
        if name != "init":
            raise GuestBuildError(f"agent file {name}: only guest/agent/init is packed")
    order = []
    for mod in modules:
        rel = f"{release}/{mod.info.name}"
        arc.add(cpio.regular(f"lib/modules/{rel}.ko", mod.elf))
        order.append(rel)
    arc.add(cpio.regular("etc/iommulab/modules", "".join(f"{o}\n" for o in order).encode()))
    return arc


def _load(out: Path, arch: GuestArch) -> GuestImage | None:
    manifest = out / "manifest.json"
    if not manifest.exists():
        return None
    data = json.loads(manifest.read_text())
    return GuestImage(
        arch.name,
        data["release"],
        Path(data["kernel"]),
        Path(data["initrd"]),
        data["banner"],
        tuple(data["modules"]),
        out,
    )


def build_image(
    arch_name: str,
    modules: tuple[str, ...] = DEFAULT_MODULES,
    cache: Path | None = None,
    versions: dict[str, str] | None = None,
    agent_dir: Path = AGENT_DIR,
    log: bool = False,
    lock: list[Pin] | None = None,
) -> GuestImage:
    """The cached image for ``arch_name``, building it when an input changed.

    Safe to call from several processes at once (parallel boot tests): one
    builds under a lock in the cache, the others wait and take its image.
    """
    arch = get_arch(arch_name)
    cache = cache or cache_root()
    versions = versions if versions is not None else read_versions()
    agent = agent_files(agent_dir)
    key = image_key(arch, versions, modules, agent)
    out = cache / "guest" / "images" / f"{arch.name}-{key}"
    image = _load(out, arch)
    if image is not None:
        return image
    (cache / "guest").mkdir(parents=True, exist_ok=True)
    with (cache / "guest" / "build.lock").open("w") as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        image = _load(out, arch)  # built while we waited
        if image is not None:
            return image
        return _build(arch, modules, cache, versions, agent, out, log, lock)


def _build(
    arch: GuestArch,
    modules: tuple[str, ...],
    cache: Path,
    versions: dict[str, str],
    agent: dict[str, bytes],
    out: Path,
    log: bool,
    lock: list[Pin] | None,
) -> GuestImage:
    def say(msg: str) -> None:
        if log:
            print(f">> guest {arch.name}: {msg}", file=sys.stderr, flush=True)

    kernel_pkg, busybox_pkg = arch.packages(versions)
    say(f"packages {kernel_pkg.spec} {busybox_pkg.spec}")
    kdeb, bdeb = download([kernel_pkg, busybox_pkg], cache / "guest" / "debs", lock)
    kroot = extract(kdeb, cache / "guest" / "extract" / kdeb.stem)
    broot = extract(bdeb, cache / "guest" / "extract" / bdeb.stem)

    release = arch.release(versions["LINUX_ABI"])
    kernel_src = kroot / arch.kernel_file.format(release=release)
    if not kernel_src.exists():
        raise GuestBuildError(f"{kdeb.name} has no {kernel_src.relative_to(kroot)}")
    if arch.elf_kernel:
        banner = vmlinux_banner(kernel_src, release, arch.target)
    else:
        banner = bzimage_banner(kernel_src, release)
    say(f"kernel ok: {banner[:80]}")

    moddir = next(
        (
            p
            for p in (kroot / "usr/lib/modules" / release, kroot / "lib/modules" / release)
            if p.is_dir()
        ),
        None,
    )
    if moddir is None:
        raise GuestBuildError(f"{kdeb.name} has no lib/modules/{release}")
    resolved = ModuleTree(moddir, release, arch.target).resolve(modules)
    say(f"modules: {' '.join(m.info.name for m in resolved)}")

    busybox = broot / "usr/bin/busybox"
    if not busybox.exists():
        busybox = broot / "bin/busybox"
    if not busybox.exists():
        raise GuestBuildError(f"{bdeb.name} has no busybox binary")

    archive = build_initramfs(busybox.read_bytes(), agent, resolved, release)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kernel_dst = tmp / Path(arch.kernel_file).name.format(release=release)
    shutil.copyfile(kernel_src, kernel_dst)
    (tmp / "initrd.cpio.gz").write_bytes(archive.to_gzip())
    image = GuestImage(
        arch.name,
        release,
        out / kernel_dst.name,
        out / "initrd.cpio.gz",
        banner,
        tuple(m.info.name for m in resolved),
        out,
    )
    # the manifest goes in before the directory is published: a reader
    # never sees an image without one
    (tmp / "manifest.json").write_text(json.dumps(image.to_json(), indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    say(f"image {out}")
    return image
