#!/usr/bin/env bash
# Build the lab's guest kernel for one architecture from upstream Linux
# (LINUX_ORIG_VERSION in versions.env: the orig tarball of Debian's linux source
# package, unpacked by fetch-linux.sh, without Debian's patches), once, into the cache:
#
#     scripts/build-kernel.sh x86_64|ppc64le [--force]
#
# prints the output directory, $IOMMULAB_CACHE/kernel/<arch>-<version>/:
#     bzImage (x86_64) or vmlinux (ppc64le)   the kernel QEMU boots
#     config                                  the kernel's .config
#     modules.builtin                         what is built in (there are no modules)
#     release                                 its `uname -r` (6.19.11-iommulab)
#     headers/                                its UAPI headers (headers_install)
#     selftests/iommufd, iommufd_fail_nth     tools/testing/selftests/iommu, static
#                                             (guest/selftests/build.sh)
#     built                                   the stamp, written last
#
# The configuration is `make allnoconfig` with guest/kernel/common.config and
# guest/kernel/<arch>.config as KCONFIG_ALLCONFIG: nothing but what the lab
# needs, all built in (no modules).  The build fails if Kconfig dropped or
# changed any option of the fragments, or if the image does not carry the
# expected version.  The stamp records the source version, the selftests'
# libcap-dev version and the hash of the fragments, guest/selftests/ and this
# script: changing any rebuilds (incrementally: the build directory next to the
# output is kept).  ppc64le is cross-compiled
# with Debian's gcc-powerpc64le-linux-gnu.  Builds are serialised per
# architecture by a lock.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
source "$here/common.sh"

arch=${1:-}
force=${2:-}
case "$arch" in
    x86_64) karch=x86; cross=""; image=arch/x86/boot/bzImage; out_image=bzImage ;;
    ppc64le) karch=powerpc; cross=powerpc64le-linux-gnu-; image=vmlinux; out_image=vmlinux ;;
    *) die "usage: $0 x86_64|ppc64le [--force]" ;;
esac
[ -z "$force" ] || [ "$force" = --force ] || die "unknown option '$force'"
command -v "${cross}gcc" >/dev/null ||
    die "${cross}gcc not found: run scripts/setup-host.sh (gcc-powerpc64le-linux-gnu for ppc64le)"
for tool in flex bison bc; do
    command -v $tool >/dev/null || die "$tool not found: run scripts/setup-host.sh"
done

version=$LINUX_ORIG_VERSION
fragments=("$IOMMULAB_REPO/guest/kernel/common.config" "$IOMMULAB_REPO/guest/kernel/$arch.config")
# A kernel variant adds fragments of its own (guest/kernel-patches/*/build.sh sets this).
[ -z "${IOMMULAB_KERNEL_EXTRA_CONFIG:-}" ] || fragments+=($IOMMULAB_KERNEL_EXTRA_CONFIG)
out="$IOMMULAB_CACHE/kernel/$arch-$version"
build="$IOMMULAB_CACHE/kernel/build-$arch-$version"
selftests=("$IOMMULAB_REPO"/guest/selftests/*)
inputs=("${fragments[@]}" "${selftests[@]}" "$here/build-kernel.sh")
key="linux=$version libcap=$LIBCAP_DEV_VERSION inputs=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)"
mkdir -p "$IOMMULAB_CACHE/kernel"

exec 9>"$IOMMULAB_CACHE/kernel/.lock-$arch"
if ! flock -n 9; then
    echo ">> kernel/$arch: another build holds the lock, waiting" >&2
    flock 9
fi

if [ -z "$force" ] && [ -f "$out/built" ] && [ "$(head -n 1 "$out/built")" = "$key" ]; then
    echo "$out"
    exit 0
fi

src=$(bash "$here/fetch-linux.sh")
mk=(make -C "$src" O="$build" ARCH="$karch" CROSS_COMPILE="$cross" -s)

echo ">> kernel/$arch: configuring Linux $version (allnoconfig + ${fragments[*]##*/})" >&2
mkdir -p "$build"
cat "${fragments[@]}" > "$build/fragment.config"
"${mk[@]}" KCONFIG_ALLCONFIG="$build/fragment.config" allnoconfig >&2

# Every option of the fragments must be in the result as written: a line
# Kconfig dropped (an unmet dependency, a renamed symbol) fails here, not at
# boot.
missing=$(grep -E '^(CONFIG_|# CONFIG_.* is not set)' "$build/fragment.config" |
    grep -vxF -f "$build/.config" || true)
if [ -n "$missing" ]; then
    echo "error: Kconfig did not keep these options of guest/kernel/*.config:" >&2
    echo "$missing" | sed 's/^/    /' >&2
    echo "       (their dependencies are unmet or the symbols changed; see" >&2
    echo "        'make menuconfig' in $build)" >&2
    exit 1
fi

release=$("${mk[@]}" kernelrelease)
jobs=${IOMMULAB_KERNEL_JOBS:-$(nproc)}
echo ">> kernel/$arch: building $release with make -j$jobs (log: $build/build.log)" >&2
start=$(date +%s)
# Progress: one line per 500 compiled files (a full build is ~2,000-3,000).
set +e
nice -n 5 make -C "$src" O="$build" ARCH="$karch" CROSS_COMPILE="$cross" -j"$jobs" \
    KBUILD_BUILD_USER=iommulab KBUILD_BUILD_HOST=iommulab 2>&1 |
    tee "$build/build.log" |
    awk -v a="$arch" -v t0="$start" '/^  CC /{ n++; if (n % 500 == 0) {
        printf ">> kernel/%s: %d files compiled, %ds\n", a, n, systime() - t0 > "/dev/stderr" } }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
    echo "error: the kernel build failed (exit $rc); the end of $build/build.log:" >&2
    grep -E 'error|Error' "$build/build.log" | tail -n 20 >&2 || tail -n 20 "$build/build.log" >&2
    exit 1
fi
"${mk[@]}" INSTALL_HDR_PATH="$build/headers" headers_install >&2
echo ">> kernel/$arch: building the iommufd selftests (static)" >&2
bash "$IOMMULAB_REPO/guest/selftests/build.sh" "$src" "$build/headers" "$build/selftests" "$cross"

# vmlinux carries the banner; a bzImage's setup header the release string.
grep -aqF "Linux version $release (iommulab@iommulab)" "$build/$image" ||
    grep -aqF "$release (iommulab@iommulab)" "$build/$image" ||
    die "$build/$image does not carry the version string of $release"

rm -rf "$out.tmp" "$out"
mkdir -p "$out.tmp"
cp "$build/$image" "$out.tmp/$out_image"
cp "$build/.config" "$out.tmp/config"
cp "$build/modules.builtin" "$out.tmp/modules.builtin"
cp -r "$build/headers" "$out.tmp/headers"
cp -r "$build/selftests" "$out.tmp/selftests"
echo "$release" > "$out.tmp/release"
printf '%s\nbuilt %s in %ds\n' "$key" "$(date -u +%FT%TZ)" "$(($(date +%s) - start))" \
    > "$out.tmp/built"
mv "$out.tmp" "$out"
echo ">> kernel/$arch: $release built in $(($(date +%s) - start))s:" \
    "$out/$out_image ($(du -h "$out/$out_image" | cut -f1))" >&2
echo "$out"
