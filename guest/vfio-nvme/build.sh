#!/usr/bin/env bash
# Build vfio-nvme static for the guest images, into the cache:
#
#     guest/vfio-nvme/build.sh x86_64|ppc64le [OUT]
#
# prints the binary's path (default OUT: $IOMMULAB_CACHE/vfio-nvme/<arch>/).
# ppc64le is cross-compiled with gcc-powerpc64le-linux-gnu (scripts/setup-host.sh).
# Needs no kernel headers newer than the host's: uapi.h carries the iommufd and
# VFIO-cdev definitions.  Rebuilt only when a source file is newer (make).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../scripts/common.sh"
arch=${1:-}
case "$arch" in
    x86_64) want="X86-64" ;;
    ppc64le) want="PowerPC64" ;;
    *) die "usage: $0 x86_64|ppc64le [OUT]" ;;
esac
out=${2:-$IOMMULAB_CACHE/vfio-nvme/$arch}
make -s -C "$here" ARCH="$arch" O="$out" >&2
bin="$out/vfio-nvme"
hdr=$(LC_ALL=C readelf -lh "$bin")
! grep -q INTERP <<<"$hdr" || die "$bin is dynamically linked"
grep -q "Machine: *.*$want" <<<"$hdr" || die "$bin is not a $want binary"
echo "$bin"
