#!/usr/bin/env bash
# Build the guest-side conformance runner (guest/conformance) static for
# x86_64 and ppc64le against the uAPI headers of the lab kernel's own source
# (include/uapi/linux/iommufd.h and drivers/iommu/iommufd/iommufd_test.h of
# the tree scripts/fetch-linux.sh unpacks), once per input, into
#     $IOMMULAB_CACHE/conformance/<key>/iommufd-conformance-<arch>
# Prints that directory.  The key hashes the source, the headers and the
# compilers' versions; a finished build carries the '.done' stamp.
#
#   scripts/build-conformance.sh [ARCH...]     (default: x86_64 ppc64le)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(x86_64 ppc64le)

cc_for() {
    case "$1" in
        x86_64) [ "$(uname -m)" = x86_64 ] && echo gcc || echo x86_64-linux-gnu-gcc ;;
        ppc64le) [ "$(uname -m)" = ppc64le ] && echo gcc || echo powerpc64le-linux-gnu-gcc ;;
        *) die "unknown architecture $1 (x86_64 or ppc64le)" ;;
    esac
}

src_tree=$("$here/fetch-linux.sh")
uapi="$src_tree/include/uapi/linux/iommufd.h"
testh="$src_tree/drivers/iommu/iommufd/iommufd_test.h"
[ -f "$uapi" ] && [ -f "$testh" ] || die "$src_tree lacks iommufd.h or iommufd_test.h"
src="$IOMMULAB_REPO/guest/conformance/iommufd-conformance.c"

key=$( {
    sha256sum "$src" "$uapi" "$testh" | cut -d' ' -f1
    for a in "${arches[@]}"; do
        cc=$(cc_for "$a")
        command -v "$cc" >/dev/null ||
            die "$cc not found: run scripts/setup-host.sh (gcc-powerpc64le-linux-gnu, libc6-dev-ppc64el-cross)"
        echo "$a $("$cc" --version | head -n 1)"
    done
} | sha256sum | cut -c1-16)
out="$IOMMULAB_CACHE/conformance/$key"
mkdir -p "$IOMMULAB_CACHE/conformance"
exec 9>"$IOMMULAB_CACHE/conformance/.lock"
flock 9
if [ -f "$out/.done" ]; then
    echo "$out"
    exit 0
fi
rm -rf "$out.tmp"
mkdir -p "$out.tmp/include/linux"
cp "$uapi" "$out.tmp/include/linux/iommufd.h"
cp "$testh" "$out.tmp/include/iommufd_test.h"
for a in "${arches[@]}"; do
    cc=$(cc_for "$a")
    echo ">> conformance: $cc -> iommufd-conformance-$a" >&2
    "$cc" -static -O2 -Wall -Wextra -Werror -Wno-sign-compare -Wno-unused-parameter \
        -I"$out.tmp/include" -o "$out.tmp/iommufd-conformance-$a" "$src"
done
rm -rf "$out.tmp/include"
date -u +%FT%TZ > "$out.tmp/.done"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
