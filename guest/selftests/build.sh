#!/usr/bin/env bash
# Build the kernel's iommufd selftests (tools/testing/selftests/iommu:
# iommufd and iommufd_fail_nth) static, for the guest's architecture, from
# the same source tree and UAPI headers as the lab kernel, with the kselftest
# harness's own Makefile (lib.mk).  Called by scripts/build-kernel.sh:
#
#     guest/selftests/build.sh SRC HEADERS OUT [CROSS_COMPILE]
#
# SRC: the unpacked linux tree; HEADERS: its headers_install directory;
# OUT: where the two binaries go (nothing is written into SRC).
# Linux 6.19.11's selftest compiles against its own headers as they are (the
# 6.12.107 build needed a force-included compat header; 6.19 needs none), but
# links libcap (`iommufd` drops CAP_IPC_LOCK for its locked-memory tests):
# Debian's libcap-dev for the guest's architecture (LIBCAP_DEV_VERSION in
# scripts/versions.env, pinned in debian.lock), unpacked once into the cache
# and linked statically from there, so no host or multiarch package is needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../scripts/versions.env"
source "$here/../../scripts/common.sh"
src=$1 headers=$2 out=$3 cross=${4:-}
if [ -n "$cross" ]; then
    want=PowerPC64 debarch=ppc64el triplet=powerpc64le-linux-gnu
else
    want=X86-64 debarch=amd64 triplet=x86_64-linux-gnu
fi

# libcap-dev, unpacked once per architecture and version (stamped last, locked)
libcap="$IOMMULAB_CACHE/libcap/$debarch-${LIBCAP_DEV_VERSION//:/_}"
mkdir -p "$IOMMULAB_CACHE/libcap"
(
    flock 8
    if [ ! -f "$libcap/.iommulab-unpacked" ]; then
        deb=$(debian_fetch libcap-dev "$debarch" "$LIBCAP_DEV_VERSION" \
            "$IOMMULAB_CACHE/libcap/download") ||
            die "could not download libcap-dev $LIBCAP_DEV_VERSION ($debarch)"
        rm -rf "$libcap" "$libcap.tmp"
        dpkg-deb -x "$deb" "$libcap.tmp"
        [ -f "$libcap.tmp/usr/lib/$triplet/libcap.a" ] &&
            [ -f "$libcap.tmp/usr/include/sys/capability.h" ] ||
            die "$deb has no usr/lib/$triplet/libcap.a or sys/capability.h"
        date -u +%FT%TZ >"$libcap.tmp/.iommulab-unpacked"
        mv "$libcap.tmp" "$libcap"
    fi
) 8>"$IOMMULAB_CACHE/libcap/.lock"

rm -rf "$out" "$out.tmp"
mkdir -p "$out.tmp"
make -s -C "$src/tools/testing/selftests/iommu" \
    OUTPUT="$out.tmp" CROSS_COMPILE="$cross" \
    KHDR_INCLUDES="-isystem $headers/include" \
    USERCFLAGS="-isystem $libcap/usr/include" \
    USERLDFLAGS="-static -L$libcap/usr/lib/$triplet" \
    "$out.tmp/iommufd" "$out.tmp/iommufd_fail_nth" >&2 2> >(grep -v 'warning: Using .* in statically linked' >&2)
for prog in iommufd iommufd_fail_nth; do
    f="$out.tmp/$prog"
    [ -x "$f" ] || { echo "error: $f was not built" >&2; exit 1; }
    hdr=$(LC_ALL=C readelf -lh "$f")
    # static: no program interpreter, and built for the guest's machine
    if grep -q 'INTERP' <<<"$hdr"; then
        echo "error: $f is dynamically linked" >&2; exit 1
    fi
    grep -q "Machine: *.*$want" <<<"$hdr" || {
        echo "error: $f is not a $want binary" >&2; exit 1; }
done
mv "$out.tmp" "$out"
