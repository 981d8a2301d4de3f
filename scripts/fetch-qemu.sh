#!/usr/bin/env bash
# Download Debian's qemu source package (pinned in versions.env), verify it
# and unpack it once into the cache.  Prints the unpacked tree's path.
#
# A tree is only used if it carries the '.iommulab-unpacked' stamp written as
# the very last step; anything else (an interrupted unpack) is removed first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
source "$here/common.sh"

upstream=${QEMU_DEB_VERSION#*:}          # 10.0.13+ds-0+deb13u1
upstream=${upstream%%+*}                  # 10.0.13
src_dir="$IOMMULAB_CACHE/qemu-src/qemu-${QEMU_DEB_VERSION#*:}"
stamp="$src_dir/.iommulab-unpacked"

if [ -f "$stamp" ]; then
    echo "$src_dir"
    exit 0
fi

dl="$IOMMULAB_CACHE/qemu-src/download"
echo ">> qemu: downloading Debian source qemu=$QEMU_DEB_VERSION" >&2
# The .dsc is pinned by hash in scripts/debian.lock; the files it names are
# checked against the .dsc's own hashes (pyctl/debian.py).
dsc=$(debian_fetch qemu source "$QEMU_DEB_VERSION" "$dl") || {
    echo "error: could not download Debian source package qemu=$QEMU_DEB_VERSION." >&2
    echo "       If Debian no longer carries this version, update QEMU_DEB_VERSION in" >&2
    echo "       scripts/versions.env and run 'python3 -m pyctl.debian lock'; otherwise" >&2
    echo "       check the network and re-run." >&2
    exit 1
}

# dpkg-source checks every file named in the .dsc against its size and
# checksums once more while unpacking.
echo ">> qemu: verifying and unpacking $dsc" >&2
rm -rf "$src_dir" "$src_dir.tmp"
if ! dpkg-source --require-strong-checksums -x "$dsc" "$src_dir.tmp" >&2; then
    rm -rf "$src_dir.tmp"
    echo "error: $dsc failed verification or unpacking; the download was removed," >&2
    echo "       re-run to fetch it again." >&2
    rm -f "$dl"/qemu_*
    exit 1
fi
grep -qx "$upstream" "$src_dir.tmp/VERSION" || {
    echo "error: unpacked tree is QEMU $(cat "$src_dir.tmp/VERSION"), expected $upstream" >&2
    exit 1
}
mv "$src_dir.tmp" "$src_dir"
date -u +%FT%TZ > "$stamp"
echo "$src_dir"
