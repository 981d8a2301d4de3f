"""Download Debian packages by name through the project's private apt root and unpack them.

Downloads go through ``scripts/debian-apt.sh`` (``apt-get download``), so apt
checks every file against the signed indexes.  Unpacking uses ``dpkg-deb -x``
into a directory that is only published once complete.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyctl.guest import GuestBuildError

REPO = Path(__file__).resolve().parents[2]
APT_HELPER = REPO / "scripts" / "debian-apt.sh"
VERSIONS_ENV = REPO / "scripts" / "versions.env"

_ENV_LINE = re.compile(r'^([A-Z0-9_]+)="?([^"]*)"?\s*$')


def read_versions(path: Path = VERSIONS_ENV) -> dict[str, str]:
    """The KEY="VALUE" pins of versions.env."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if m is None:
            raise GuestBuildError(f"{path}: cannot parse line {line!r}")
        out[m.group(1)] = m.group(2)
    return out


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str  # Debian architecture: amd64, ppc64el, all

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.arch}={self.version}"

    @property
    def filename(self) -> str:
        """The file name apt-get download gives it (epoch colon URL-encoded)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def download(packages: list[Package], dest: Path) -> list[Path]:
    """The .deb files of ``packages`` in ``dest``, downloading the missing ones."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not (dest / p.filename).exists()]
    if missing:
        specs = " ".join(shlex.quote(p.spec) for p in missing)
        script = (
            f"source {shlex.quote(str(APT_HELPER))} && iommulab_apt_update >&2 && "
            f"cd {shlex.quote(str(dest))} && iommulab_apt download {specs}"
        )
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "error"))]
            detail = "; ".join(errors) or proc.stderr.strip()[-400:]
            raise GuestBuildError(
                f"cannot download {', '.join(p.spec for p in missing)} from Debian: {detail}. "
                "If Debian dropped the pinned version, update scripts/versions.env "
                "(see `iommulab_apt_cache policy PACKAGE`)"
            )
    paths = [dest / p.filename for p in packages]
    for pkg, path in zip(packages, paths, strict=True):
        if not path.exists():
            raise GuestBuildError(f"apt reported success but {path} is missing ({pkg.spec})")
    return paths


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
