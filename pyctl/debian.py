"""Debian archive files pinned by hash: the lock file, the fetcher, the lock maker.

Everything iommulab takes from Debian (the QEMU source, the firmware, the
guest kernels and busybox) is named in ``scripts/debian.lock`` with its pool
path, size and SHA-256.  :func:`fetch` downloads a pinned file from the
mirror's pool and keeps it only if size and hash match, so a build needs
nothing from the mirror but the pool files themselves: no index, no apt.

Why not apt with its signed indexes: a mirror caught mid-sync serves
``Packages`` files that no longer match its ``InRelease`` (seen here on
2026-11-23 for trixie's and trixie-security's ppc64el indexes, and earlier
for bookworm-security's), and apt then refuses the whole refresh.  Pool
files never change under a given name, so hashes pinned once stay right.

``python3 -m pyctl.debian lock`` writes the lock from the versions pinned in
``scripts/versions.env``, checking ``InRelease`` with gpgv against Debian's
archive keyring and each index against ``InRelease``.  A pin taken from an
index that failed that check is written only with ``--trust-unverified``
and is marked ``unverified`` in the lock; ``check`` re-verifies the pins
once the indexes are whole again.  This module uses the standard library
only, so the shell scripts run it with any ``python3`` before the venv.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "scripts" / "debian.lock"
VERSIONS_ENV = REPO / "scripts" / "versions.env"
MIRROR = os.environ.get("IOMMULAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = os.environ.get("IOMMULAB_DEBIAN_SUITE", "trixie")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: architectures of binary packages in the lock (``all`` is in every index)
BINARY_ARCHES = ("amd64", "ppc64el")
SOURCE = "source"
#: the "arch" of a pin that is a source package's upstream tarball alone
#: (``NAME_VERSION.orig.tar.xz``), taken from the Sources index of its suite
ORIG = "orig"
RETRIES = 3

_ENV_LINE = re.compile(r'^([A-Z0-9_]+)="?([^"]*)"?\s*$')


class DebianError(Exception):
    """A pin is missing or wrong, a download failed, or an index did not verify."""


@dataclass(frozen=True)
class Pin:
    """One file in the pool: a binary package (.deb), a source package (.dsc) or a
    source package's upstream tarball alone (arch ``orig``)."""

    name: str
    arch: str  # amd64 | ppc64el | all | source | orig
    version: str
    size: int
    sha256: str
    path: str  # in the mirror, e.g. pool/main/q/qemu/qemu_10.0.13+ds-0+deb13u1.dsc
    verified: bool = True  # taken from an index that matched the signed InRelease

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def line(self) -> str:
        fields = [self.name, self.arch, self.version, str(self.size), self.sha256, self.path]
        return " ".join(fields + ([] if self.verified else ["unverified"]))


def read_versions(path: Path = VERSIONS_ENV) -> dict[str, str]:
    """The KEY="VALUE" pins of versions.env."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if m is None:
            raise DebianError(f"{path}: cannot parse line {line!r}")
        out[m.group(1)] = m.group(2)
    return out


def parse_lock(text: str, origin: str = "debian.lock") -> list[Pin]:
    pins = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        f = line.split()
        if len(f) not in (6, 7) or (len(f) == 7 and f[6] != "unverified"):
            raise DebianError(f"{origin}:{n}: expected 'name arch version size sha256 path'")
        if not f[3].isdigit() or not re.fullmatch(r"[0-9a-f]{64}", f[4]):
            raise DebianError(f"{origin}:{n}: bad size or sha256 in {line!r}")
        pins.append(Pin(f[0], f[1], f[2], int(f[3]), f[4], f[5], verified=len(f) == 6))
    return pins


def read_lock(path: Path = LOCK) -> list[Pin]:
    return parse_lock(path.read_text(), str(path))


def find_pin(pins: Sequence[Pin], name: str, arch: str, version: str) -> Pin:
    for p in pins:
        if (p.name, p.arch, p.version) == (name, arch, version):
            return p
    raise DebianError(
        f"{name} {version} ({arch}) is not pinned in {LOCK.relative_to(REPO)}: after changing "
        "scripts/versions.env, run `python3 -m pyctl.debian lock`"
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _get(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest``, retrying transient failures."""
    for attempt in range(1, RETRIES + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as r, dest.open("wb") as out:
                while block := r.read(1 << 20):
                    out.write(block)
            return
        except urllib.error.HTTPError as e:
            if e.code == 404 or attempt == RETRIES:
                raise DebianError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError) as e:
            if attempt == RETRIES:
                raise DebianError(f"{url}: {e}") from e
        time.sleep(2 * attempt)


def fetch_file(path: str, size: int, sha256: str, dest_dir: Path, mirror: str = MIRROR) -> Path:
    """``mirror/path`` in ``dest_dir``, kept only if its size and SHA-256 match."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.rsplit("/", 1)[-1]
    if dest.exists() and dest.stat().st_size == size and sha256_file(dest) == sha256:
        return dest
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".part-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _get(f"{mirror.rstrip('/')}/{path}", tmp)
        got_size = tmp.stat().st_size
        got = sha256_file(tmp)
        if (got_size, got) != (size, sha256):
            raise DebianError(
                f"{path}: got {got_size} bytes with sha256 {got}, pinned {size} bytes with "
                f"sha256 {sha256}; the file was discarded"
            )
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch(pin: Pin, dest_dir: Path, mirror: str = MIRROR) -> Path:
    """The pinned file in ``dest_dir``; for a source package, its .dsc after
    all the files the .dsc names (each checked against the .dsc's SHA-256)."""
    dsc = fetch_file(pin.path, pin.size, pin.sha256, dest_dir, mirror)
    if pin.arch == SOURCE:
        pool_dir = pin.path.rsplit("/", 1)[0]
        for size, sha, name in dsc_files(dsc.read_text()):
            fetch_file(f"{pool_dir}/{name}", size, sha, dest_dir, mirror)
    return dsc


def dsc_files(text: str) -> list[tuple[int, str, str]]:
    """(size, sha256, file name) of the files a .dsc names."""
    out = []
    in_field = False
    for line in text.splitlines():
        if line.startswith("Checksums-Sha256:"):
            in_field = True
            continue
        if in_field and line.startswith(" "):
            sha, size, name = line.split()
            if "/" in name:
                raise DebianError(f"the .dsc names a file with a path: {name!r}")
            out.append((int(size), sha, name))
        else:
            in_field = False
    if not out:
        raise DebianError("the .dsc has no Checksums-Sha256 field")
    return out


# -- the lock maker -------------------------------------------------------------


#: (name, arch, version, suite): one file to pin and the suite whose signed index names it
Want = tuple[str, str, str, str]


def wanted(versions: dict[str, str], suite: str = SUITE) -> list[Want]:
    """Everything the build and the guests take from Debian.  The lab kernels'
    source is an upstream tarball alone (``LINUX_ORIG_VERSION``), pinned from
    the Sources index of ``LINUX_ORIG_SUITE``; their selftests' libcap-dev comes
    from ``LIBCAP_DEV_SUITE`` (both default to ``suite``)."""
    abi = versions["LINUX_ABI"]
    linux = versions["LINUX_VERSION"]
    busybox = versions["BUSYBOX_VERSION"]
    orig_suite = versions.get("LINUX_ORIG_SUITE", suite)
    libcap = versions["LIBCAP_DEV_VERSION"]
    libcap_suite = versions.get("LIBCAP_DEV_SUITE", suite)
    return [
        ("qemu", SOURCE, versions["QEMU_DEB_VERSION"], suite),
        ("qemu-system-data", "all", versions["QEMU_SYSTEM_DATA_VERSION"], suite),
        ("seabios", "all", versions["SEABIOS_VERSION"], suite),
        (f"linux-image-{abi}-amd64-unsigned", "amd64", linux, suite),
        (f"linux-image-{abi}-powerpc64le", "ppc64el", linux, suite),
        ("linux", ORIG, versions["LINUX_ORIG_VERSION"], orig_suite),
        ("busybox-static", "amd64", busybox, suite),
        ("busybox-static", "ppc64el", busybox, suite),
        ("libcap-dev", "amd64", libcap, libcap_suite),
        ("libcap-dev", "ppc64el", libcap, libcap_suite),
    ]


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """The paragraphs of a Packages or Sources file (continuation lines kept)."""
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _download_bytes(url: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f"
        _get(url, p)
        return p.read_bytes()


def signed_release(mirror: str, suite: str) -> dict[str, tuple[int, str]]:
    """{index path: (size, sha256)} from ``InRelease``, after gpgv checked its signature."""
    data = _download_bytes(f"{mirror}/dists/{suite}/InRelease")
    with tempfile.TemporaryDirectory() as d:
        signed = Path(d) / "InRelease"
        signed.write_bytes(data)
        out = Path(d) / "Release"
        proc = subprocess.run(
            ["gpgv", "--keyring", str(KEYRING), "--output", str(out), str(signed)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise DebianError(f"{suite} InRelease: bad signature: {proc.stderr.strip()}")
        release = out.read_text()
    hashes: dict[str, tuple[int, str]] = {}
    for para in stanzas(release):
        for line in para.get("SHA256", "").splitlines():
            f = line.split()
            if len(f) == 3:
                hashes[f[2]] = (int(f[1]), f[0])
    return hashes


def index_text(
    mirror: str, suite: str, arch: str, release: dict[str, tuple[int, str]]
) -> tuple[str, bool]:
    """(the Packages or Sources index of ``arch``, whether it matched InRelease)."""
    rel = "main/source/Sources.xz" if arch == SOURCE else f"main/binary-{arch}/Packages.xz"
    data = _download_bytes(f"{mirror}/dists/{suite}/{rel}")
    ok = release.get(rel) == (len(data), hashlib.sha256(data).hexdigest())
    return lzma.decompress(data).decode(), ok


def lookup(index: str, name: str, arch: str, version: str) -> tuple[int, str, str] | None:
    """(size, sha256, pool path) of a package in an index, or None.  For ``orig``,
    ``version`` is the upstream version: any source package of ``name`` that
    names ``NAME_VERSION.orig.tar.xz`` gives it (all revisions share one file)."""
    for st in stanzas(index):
        if arch == ORIG:
            if st.get("Package") != name:
                continue
            want = f"{name}_{version}.orig.tar.xz"
            for line in st.get("Checksums-Sha256", "").splitlines():
                f = line.split()
                if len(f) == 3 and f[2] == want:
                    return int(f[1]), f[0], f"{st['Directory']}/{want}"
            continue
        if st.get("Package") != name or st.get("Version") != version:
            continue
        if arch == SOURCE:
            directory = st["Directory"]
            for line in st.get("Checksums-Sha256", "").splitlines():
                f = line.split()
                if len(f) == 3 and f[2].endswith(".dsc"):
                    return int(f[1]), f[0], f"{directory}/{f[2]}"
        elif st.get("Architecture") == arch:
            return int(st["Size"]), st["SHA256"], st["Filename"]
    return None


def make_pins(
    want: Sequence[Want],
    mirror: str,
    trust_unverified: Sequence[str] = (),
) -> list[Pin]:
    releases: dict[str, dict[str, tuple[int, str]]] = {}
    indexes: dict[tuple[str, str], tuple[str, bool]] = {}
    pins = []
    for name, arch, version, suite in want:
        if suite not in releases:
            releases[suite] = signed_release(mirror, suite)
        look = (
            [SOURCE] if arch in (SOURCE, ORIG) else list(BINARY_ARCHES) if arch == "all" else [arch]
        )
        found = None
        for idx in look:
            if (suite, idx) not in indexes:
                indexes[suite, idx] = index_text(mirror, suite, idx, releases[suite])
            text, ok = indexes[suite, idx]
            hit = lookup(text, name, arch, version)
            if hit and (ok or idx in trust_unverified):
                found = Pin(name, arch, version, hit[0], hit[1], hit[2], verified=ok)
                break
            if hit and not ok:
                raise DebianError(
                    f"{suite}'s {idx} index does not match its signed InRelease (mirror out of "
                    f"sync?); {name} {version} cannot be pinned from it unless you pass "
                    f"--trust-unverified {idx}"
                )
        if found is None:
            raise DebianError(f"{name} {version} ({arch}) is not in {suite}")
        pins.append(found)
    return pins


LOCK_HEADER = """\
# Files iommulab takes from Debian, pinned by SHA-256 (pyctl/debian.py).
# Written by `python3 -m pyctl.debian lock` from scripts/versions.env; do not edit.
# name arch version size sha256 pool-path [unverified]
"""


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m pyctl.debian", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download a pinned file into DEST; prints its path")
    f.add_argument("name")
    f.add_argument("arch", help="amd64, ppc64el, all or source")
    f.add_argument("version")
    f.add_argument("dest", type=Path)
    lk = sub.add_parser("lock", help="(re)write scripts/debian.lock from versions.env")
    lk.add_argument("--trust-unverified", action="append", default=[], metavar="ARCH")
    sub.add_parser("check", help="re-verify every pin against the signed indexes")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "fetch":
            pin = find_pin(read_lock(), a.name, a.arch, a.version)
            print(fetch(pin, a.dest))
        elif a.cmd == "lock":
            pins = make_pins(wanted(read_versions()), MIRROR, a.trust_unverified)
            LOCK.write_text(LOCK_HEADER + "".join(p.line() + "\n" for p in pins))
            print(f"{LOCK}: {len(pins)} pins, {sum(not p.verified for p in pins)} unverified")
        else:
            pins = read_lock()
            suites = {w[:3]: w[3] for w in wanted(read_versions())}
            fresh = make_pins(
                [
                    (p.name, p.arch, p.version, suites.get((p.name, p.arch, p.version), SUITE))
                    for p in pins
                ],
                MIRROR,
            )
            bad = [
                (p, q)
                for p, q in zip(pins, fresh, strict=True)
                if p.line().split()[:6] != q.line().split()[:6]
            ]
            for p, q in bad:
                print(f"MISMATCH {p.line()}\n    index {q.line()}", file=sys.stderr)
            if bad:
                return 1
            print(f"{len(pins)} pins match the signed indexes")
    except DebianError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
