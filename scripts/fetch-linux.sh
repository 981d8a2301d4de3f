#!/usr/bin/env bash
# Download Debian's linux source package (LINUX_SOURCE_VERSION in versions.env,
# pinned in debian.lock), verify it and unpack it once into the cache, with
# Debian's patches applied.  Prints the unpacked tree's path.
#
# A tree is only used if it carries the '.iommulab-unpacked' stamp written as
# the very last step; anything else (an interrupted unpack) is removed first.
# Concurrent callers are serialised by a lock next to the tree.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
source "$here/common.sh"

version=$LINUX_SOURCE_VERSION             # 6.12.107-1
upstream=${version%%-*}                   # 6.12.107
base="$IOMMULAB_CACHE/linux-src"
src_dir="$base/linux-$version"
stamp="$src_dir/.iommulab-unpacked"
mkdir -p "$base"

exec 8>"$base/.lock"
flock 8

if [ -f "$stamp" ]; then
    echo "$src_dir"
    exit 0
fi

dl="$base/download"
echo ">> linux: downloading Debian source linux=$version (~140 MB)" >&2
# The .dsc is pinned by hash in scripts/debian.lock; the files it names are
# checked against the .dsc's own hashes (pyctl/debian.py).
dsc=$(debian_fetch linux source "$version" "$dl") || {
    echo "error: could not download Debian source package linux=$version." >&2
    echo "       If Debian no longer carries this version, update LINUX_SOURCE_VERSION" >&2
    echo "       in scripts/versions.env and run 'python3 -m pyctl.debian lock';" >&2
    echo "       otherwise check the network and re-run." >&2
    exit 1
}

# dpkg-source checks every file named in the .dsc once more while unpacking
# and applies Debian's patch series.
echo ">> linux: verifying and unpacking $dsc" >&2
rm -rf "$src_dir" "$src_dir.tmp"
if ! dpkg-source --require-strong-checksums -x "$dsc" "$src_dir.tmp" >/dev/null; then
    rm -rf "$src_dir.tmp"
    echo "error: $dsc failed verification or unpacking; the download was removed," >&2
    echo "       re-run to fetch it again." >&2
    rm -f "$dl"/linux_*
    exit 1
fi
got=$(make -s -C "$src_dir.tmp" kernelversion)
[ "$got" = "$upstream" ] || {
    echo "error: unpacked tree is Linux $got, expected $upstream" >&2
    exit 1
}
# dpkg-source leaves a copy of the upstream tarball next to the tree.
rm -f "$base/linux_$upstream.orig.tar.xz"
mv "$src_dir.tmp" "$src_dir"
date -u +%FT%TZ > "$stamp"
echo "$src_dir"
