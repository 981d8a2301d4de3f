"""Build (or reuse) a guest image: kernel + initramfs with modules, busybox and the agent.

Two kernel flavours: ``debian`` (the default) boots Debian's packaged kernel
with its modules in the initramfs; ``lab`` boots the kernel the lab builds
from Debian's source with iommufd and everything built in
(:mod:`pyctl.guest.labkernel`), and carries the kernel's iommufd selftests in
``/lib/selftests/``.  ``IOMMULAB_GUEST_KERNEL=lab`` makes ``lab`` the default
of every caller that does not choose (so any boot test runs with either).

Images live in ``<cache>/guest/images/<arch>-<key>/`` (``<arch>-lab-<key>``);
the key hashes every input (pinned versions, module list, agent files, the
lab kernel's files, builder format), so a changed input gives a new image and
an unchanged one is reused.
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
from pyctl.guest.labkernel import BUILD_SCRIPT, SELFTESTS, LabKernel, lab_kernel
from pyctl.guest.modinfo import module_name_from_path, normalize
from pyctl.guest.modules import ModuleTree, ResolvedModule

AGENT_DIR = REPO / "guest" / "agent"
DEFAULT_MODULES = ("nvme",)
#: per architecture, loaded before DEFAULT_MODULES: an IOMMU driver must be up before the
#: drivers of the devices behind it (x86_64: QEMU's -device virtio-iommu-pci; ppc64le's
#: kernel has no virtio-iommu)
ARCH_MODULES: dict[str, tuple[str, ...]] = {"x86_64": ("virtio_iommu",)}


def default_modules(arch_name: str) -> tuple[str, ...]:
    return (*ARCH_MODULES.get(arch_name, ()), *DEFAULT_MODULES)


FORMAT = 1  # bump when the image layout changes
#: the guest kernel flavours; the first is the default
KERNELS = ("debian", "lab")
KERNEL_ENV = "IOMMULAB_GUEST_KERNEL"
#: where the lab flavour's initramfs carries the iommufd selftests
SELFTEST_DIR = "lib/selftests"


def default_kernel() -> str:
    """``$IOMMULAB_GUEST_KERNEL`` if set (checked), else ``debian``."""
    name = os.environ.get(KERNEL_ENV, "") or KERNELS[0]
    if name not in KERNELS:
        raise GuestBuildError(f"{KERNEL_ENV}={name}: expected one of {', '.join(KERNELS)}")
    return name


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
    flavour: str = "debian"  # KERNELS

    @property
    def selftests(self) -> tuple[str, ...]:
        """Guest paths of the iommufd selftest programs (lab flavour only)."""
        if self.flavour != "lab":
            return ()
        return tuple(f"/{SELFTEST_DIR}/{name}" for name in SELFTESTS)

    def to_json(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "release": self.release,
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "banner": self.banner,
            "modules": list(self.modules),
            "flavour": self.flavour,
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
    arch: GuestArch,
    versions: dict[str, str],
    modules: tuple[str, ...],
    agent: dict[str, bytes],
    lab: LabKernel | None = None,
) -> str:
    h = hashlib.sha256()
    kernel, busybox = arch.packages(versions)
    inputs: dict[str, object] = {
        "format": FORMAT,
        "arch": arch.name,
        "kernel": kernel.spec,
        "busybox": busybox.spec,
        "abi": versions["LINUX_ABI"],
        "modules": list(modules),
    }
    if lab is not None:
        # the Debian kernel package stays in: busybox comes from the same pins
        inputs |= {"lab": lab.stamp, "lab_release": lab.release, "lab_files": lab.digest()}
    h.update(json.dumps(inputs, sort_keys=True).encode())
    for name, data in agent.items():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def build_initramfs(
    busybox: bytes,
    agent: dict[str, bytes],
    modules: list[ResolvedModule],
    release: str,
    extra: dict[str, bytes] | None = None,
) -> cpio.Archive:
    """The initramfs archive (uncompressed form) for the given parts; ``extra``:
    more executables, archive path -> contents (their directories are made)."""
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
    made = set()
    for path, data in sorted((extra or {}).items()):
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent and parent not in made:
            arc.add(cpio.directory(parent))
            made.add(parent)
        arc.add(cpio.regular(path, data, 0o755))
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
        data.get("flavour", "debian"),
    )


def build_image(
    arch_name: str,
    modules: tuple[str, ...] | None = None,
    cache: Path | None = None,
    versions: dict[str, str] | None = None,
    agent_dir: Path = AGENT_DIR,
    log: bool = False,
    lock: list[Pin] | None = None,
    kernel: str | None = None,
    kernel_script: Path = BUILD_SCRIPT,
) -> GuestImage:
    """The cached image for ``arch_name``, building it when an input changed.

    ``kernel``: a flavour of KERNELS (None: :func:`default_kernel`).  The lab
    flavour first makes sure its kernel is built (``kernel_script``, minutes
    the first time).  Safe to call from several processes at once (parallel
    boot tests): one builds under a lock in the cache, the others wait and
    take its image.
    """
    arch = get_arch(arch_name)
    flavour = kernel if kernel is not None else default_kernel()
    if flavour not in KERNELS:
        raise GuestBuildError(f"kernel {flavour!r}: expected one of {', '.join(KERNELS)}")
    modules = modules if modules is not None else default_modules(arch.name)
    cache = cache or cache_root()
    versions = versions if versions is not None else read_versions()
    agent = agent_files(agent_dir)
    lab = lab_kernel(arch, versions, cache, log, kernel_script) if flavour == "lab" else None
    key = image_key(arch, versions, modules, agent, lab)
    name = f"{arch.name}-{key}" if lab is None else f"{arch.name}-lab-{key}"
    out = cache / "guest" / "images" / name
    image = _load(out, arch)
    if image is not None:
        return image
    (cache / "guest").mkdir(parents=True, exist_ok=True)
    with (cache / "guest" / "build.lock").open("w") as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        image = _load(out, arch)  # built while we waited
        if image is not None:
            return image
        if lab is not None:
            return _build_lab(arch, modules, cache, versions, agent, out, log, lock, lab)
        return _build(arch, modules, cache, versions, agent, out, log, lock)


def _say(arch: GuestArch, log: bool, msg: str) -> None:
    if log:
        print(f">> guest {arch.name}: {msg}", file=sys.stderr, flush=True)


def _busybox(
    arch: GuestArch, cache: Path, versions: dict[str, str], lock: list[Pin] | None
) -> bytes:
    _, busybox_pkg = arch.packages(versions)
    (bdeb,) = download([busybox_pkg], cache / "guest" / "debs", lock)
    broot = extract(bdeb, cache / "guest" / "extract" / bdeb.stem)
    for busybox in (broot / "usr/bin/busybox", broot / "bin/busybox"):
        if busybox.exists():
            return busybox.read_bytes()
    raise GuestBuildError(f"{bdeb.name} has no busybox binary")


def _banner(arch: GuestArch, kernel: Path, release: str) -> str:
    if arch.elf_kernel:
        return vmlinux_banner(kernel, release, arch.target)
    return bzimage_banner(kernel, release)


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
    kernel_pkg, busybox_pkg = arch.packages(versions)
    _say(arch, log, f"packages {kernel_pkg.spec} {busybox_pkg.spec}")
    (kdeb,) = download([kernel_pkg], cache / "guest" / "debs", lock)
    kroot = extract(kdeb, cache / "guest" / "extract" / kdeb.stem)
    busybox = _busybox(arch, cache, versions, lock)

    release = arch.release(versions["LINUX_ABI"])
    kernel_src = kroot / arch.kernel_file.format(release=release)
    if not kernel_src.exists():
        raise GuestBuildError(f"{kdeb.name} has no {kernel_src.relative_to(kroot)}")
    banner = _banner(arch, kernel_src, release)
    _say(arch, log, f"kernel ok: {banner[:80]}")

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
    _say(arch, log, f"modules: {' '.join(m.info.name for m in resolved)}")

    archive = build_initramfs(busybox, agent, resolved, release)
    image = GuestImage(
        arch.name,
        release,
        out / Path(arch.kernel_file).name.format(release=release),
        out / "initrd.cpio.gz",
        banner,
        tuple(m.info.name for m in resolved),
        out,
    )
    return _publish(image, kernel_src, archive, log)


def _build_lab(
    arch: GuestArch,
    modules: tuple[str, ...],
    cache: Path,
    versions: dict[str, str],
    agent: dict[str, bytes],
    out: Path,
    log: bool,
    lock: list[Pin] | None,
    lab: LabKernel,
) -> GuestImage:
    """The lab flavour: the lab kernel, no modules (the wanted ones must be built
    in), busybox, the agent and the selftests."""
    builtin = lab.directory / "modules.builtin"
    names = {module_name_from_path(x) for x in builtin.read_text().split()}
    missing = [m for m in modules if normalize(m) not in names]
    if missing:
        raise GuestBuildError(
            f"{', '.join(missing)}: not built into the lab kernel {lab.release} (it has no "
            "modules): add the options to guest/kernel/*.config"
        )
    banner = _banner(arch, lab.image, lab.release)
    _say(arch, log, f"lab kernel ok: {banner[:80]}")
    extra = {f"{SELFTEST_DIR}/{n}": lab.selftest(n).read_bytes() for n in SELFTESTS}
    archive = build_initramfs(_busybox(arch, cache, versions, lock), agent, [], lab.release, extra)
    image = GuestImage(
        arch.name,
        lab.release,
        out / lab.image.name,
        out / "initrd.cpio.gz",
        banner,
        (),
        out,
        "lab",
    )
    return _publish(image, lab.image, archive, log)


def _publish(image: GuestImage, kernel_src: Path, archive: cpio.Archive, log: bool) -> GuestImage:
    """Write the image's directory next to its final place, then rename it there."""
    out = image.directory
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(kernel_src, tmp / image.kernel.name)
    (tmp / image.initrd.name).write_bytes(archive.to_gzip())
    # the manifest goes in before the directory is published: a reader
    # never sees an image without one
    (tmp / "manifest.json").write_text(json.dumps(image.to_json(), indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    _say(get_arch(image.arch), log, f"image {out}")
    return image
