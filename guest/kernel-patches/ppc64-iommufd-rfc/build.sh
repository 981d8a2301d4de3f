#!/usr/bin/env bash
# Build the RFC flavour of the ppc64le lab kernel (seeded from the lab kernel's build
# tree when that exists: about a minute; else a full build):
#
#     guest/kernel-patches/ppc64-iommufd-rfc/build.sh ppc64le [--force]
#
# prints the kernel directory, like scripts/build-kernel.sh, which does the build with
#   - its own cache root, $IOMMULAB_CACHE/rfc (the lab kernel of the same version, in
#     $IOMMULAB_CACHE, stays as it is; the Debian packages are shared by a symlink);
#   - as source, a hard-linked copy of the unpacked lab tree with 0*.patch applied
#     (GNU patch writes new files, so only the patched files stop being links; the
#     pristine tree is checked to be untouched), stamped like fetch-linux.sh's trees;
#   - the lab's fragments plus rfc.config (IOMMULAB_KERNEL_EXTRA_CONFIG).
# A changed patch rebuilds the tree and the kernel.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
source "$repo/scripts/common.sh"
[ "${1:-}" = ppc64le ] || die "usage: $0 ppc64le [--force] (the RFC is for POWER only)"
force=${2:-}
[ -z "$force" ] || [ "$force" = --force ] || die "unknown option '$force'"

# The image builder calls this with the flavour's own cache root as IOMMULAB_CACHE.
case "$IOMMULAB_CACHE" in
    */rfc) main_cache=${IOMMULAB_CACHE%/rfc} ;;
    *) main_cache=$IOMMULAB_CACHE ;;
esac
rfc_cache=$main_cache/rfc
export IOMMULAB_CACHE=$main_cache
src=$(bash "$repo/scripts/fetch-linux.sh")
patched=$rfc_cache/linux-src/$(basename "$src")
phash=$(cat "$here"/0*.patch | sha256sum | cut -d' ' -f1)
mkdir -p "$rfc_cache/linux-src" "$rfc_cache/guest"
exec 7>"$rfc_cache/.lock"
flock 7

if [ "$(cat "$patched/.iommulab-rfc" 2>/dev/null)" != "$phash" ]; then
    echo ">> kernel/ppc64le-rfc: patching a hard-linked copy of $src" >&2
    rm -rf "$patched" "$patched.tmp"
    cp -al "$src" "$patched.tmp"
    for p in "$here"/0*.patch; do
        patch -s -p1 -d "$patched.tmp" <"$p" || die "$(basename "$p") does not apply to $src"
    done
    ! grep -q ppc64_domain "$src/arch/powerpc/kernel/iommu.c" ||
        die "patching changed the pristine tree $src: remove it and run fetch-linux.sh"
    echo "$phash" >"$patched.tmp/.iommulab-rfc"
    mv "$patched.tmp" "$patched"
    force=--force
fi
[ -e "$rfc_cache/guest/debs" ] || ln -s "$main_cache/guest/debs" "$rfc_cache/guest/debs"

# Seed the first build with the lab kernel's build tree (same version, same
# configuration but rfc.config): its command files name the pristine source,
# rewritten to the patched copy, so kbuild's own dependency tracking rebuilds
# only what the patch and CONFIG_VFIO_DEVICE_CDEV touch (a few hundred files,
# not the ~1,200 of a build from scratch).  The hard-linked copy keeps every
# unpatched file's mtime.
version=$(basename "$src")
version=${version#linux-}
lab_build=$main_cache/kernel/build-ppc64le-$version
rfc_build=$rfc_cache/kernel/build-ppc64le-$version
if [ ! -d "$rfc_build" ] && [ -f "$main_cache/kernel/ppc64le-$version/built" ] &&
    [ -f "$lab_build/vmlinux" ]; then
    echo ">> kernel/ppc64le-rfc: seeding the build from $lab_build" >&2
    mkdir -p "$rfc_cache/kernel"
    rm -rf "$rfc_build.tmp"
    cp -a "$lab_build" "$rfc_build.tmp"
    grep -rlIF --null "$src" "$rfc_build.tmp" | xargs -0 -r sed -i "s|$src|$patched|g"
    ! grep -rqIF "$src" "$rfc_build.tmp" || die "the seeded build still names $src"
    mv "$rfc_build.tmp" "$rfc_build"
fi

IOMMULAB_CACHE=$rfc_cache IOMMULAB_KERNEL_EXTRA_CONFIG=$here/rfc.config \
    exec bash "$repo/scripts/build-kernel.sh" ppc64le $force
