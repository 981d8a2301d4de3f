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
# compat-6.12.h is force-included: 6.12.107's selftest names UAPI that 6.12's
# headers lack (see the header).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$1 headers=$2 out=$3 cross=${4:-}
want=$( [ -n "$cross" ] && echo "PowerPC64" || echo "X86-64" )

rm -rf "$out" "$out.tmp"
mkdir -p "$out.tmp"
make -s -C "$src/tools/testing/selftests/iommu" \
    OUTPUT="$out.tmp" CROSS_COMPILE="$cross" \
    KHDR_INCLUDES="-isystem $headers/include" USERLDFLAGS=-static \
    USERCFLAGS="-include $here/compat-6.12.h" \
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
