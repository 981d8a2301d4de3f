"""The guest's Debian packages: downloaded by their pins in scripts/debian.lock, unpacked.

Downloads go through :mod:`pyctl.debian`, which keeps a file only if its
size and SHA-256 match the lock.  Unpacking uses ``dpkg-deb -x`` into a
directory that is only published once complete.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyctl import debian
from pyctl.guest import GuestBuildError

REPO = debian.REPO


def read_versions(path: Path = debian.VERSIONS_ENV) -> dict[str, str]:
    """The KEY="VALUE" pins of versions.env."""
    try:
        return debian.read_versions(path)
    except debian.DebianError as e:
        raise GuestBuildError(str(e)) from e


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str  # Debian architecture: amd64, ppc64el, all

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.arch}={self.version}"


def download(
    packages: list[Package], dest: Path, lock: list[debian.Pin] | None = None
) -> list[Path]:
    """The .deb files of ``packages`` in ``dest``, downloading (and checking) the missing ones."""
    try:
        pins = debian.read_lock() if lock is None else lock
        return [
            debian.fetch(debian.find_pin(pins, p.name, p.arch, p.version), dest) for p in packages
        ]
    except debian.DebianError as e:
        raise GuestBuildError(f"cannot download {', '.join(p.spec for p in packages)}: {e}") from e


def extract(deb: Path, root: Path) -> Path:
    """Unpack ``deb`` into ``root`` once; returns ``root``."""
    stamp = root / ".iommulab-extracted"
    if stamp.exists():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    proc = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GuestBuildError(
            f"dpkg-deb could not unpack {deb}: {proc.stderr.strip()} (delete it and re-run)"
        )
    (tmp / ".iommulab-extracted").touch()
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root
