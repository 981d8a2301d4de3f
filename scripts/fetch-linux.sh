#!/usr/bin/env bash
# Download the upstream Linux tarball Debian ships in its linux source package
# (linux_<LINUX_ORIG_VERSION>.orig.tar.xz, pinned in debian.lock from the
# signed Sources index of LINUX_ORIG_SUITE), verify it and unpack it once into
# the cache.  Upstream Linux as released: Debian's patches are not applied
# (scripts/versions.env says why).  Prints the unpacked tree's path,
# $IOMMULAB_CACHE/linux-src/linux-<version> (version-keyed: trees of other
# versions are left alone).
#
# A tree is only used if it carries the '.iommulab-unpacked' stamp written as
# the very last step; anything else (an interrupted unpack) is removed first.
# Concurrent callers are serialised by a lock next to the tree.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
source "$here/common.sh"

version=$LINUX_ORIG_VERSION               # 6.19.11
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
echo ">> linux: downloading linux_$version.orig.tar.xz (~160 MB)" >&2
# Pinned by size and SHA-256 in scripts/debian.lock; a mismatch is discarded.
tarball=$(debian_fetch linux orig "$version" "$dl") || {
    echo "error: could not download linux_$version.orig.tar.xz." >&2
    echo "       If Debian no longer carries this version, update LINUX_ORIG_VERSION" >&2
    echo "       in scripts/versions.env and run 'python3 -m pyctl.debian lock';" >&2
    echo "       otherwise check the network and re-run." >&2
    exit 1
}

echo ">> linux: unpacking $tarball" >&2
rm -rf "$src_dir" "$src_dir.tmp"
mkdir -p "$src_dir.tmp"
# The tarball holds one directory, linux-<version>/.
if ! tar -xJf "$tarball" -C "$src_dir.tmp" --strip-components=1 --no-same-owner; then
    rm -rf "$src_dir.tmp"
    echo "error: $tarball did not unpack; remove it and re-run." >&2
    exit 1
fi
got=$(make -s -C "$src_dir.tmp" kernelversion)
[ "$got" = "$version" ] || {
    rm -rf "$src_dir.tmp"
    echo "error: unpacked tree is Linux $got, expected $version" >&2
    exit 1
}
mv "$src_dir.tmp" "$src_dir"
date -u +%FT%TZ > "$stamp"
echo "$src_dir"
