#!/usr/bin/env bash
# Install the Debian packages the build and tests need (bookworm's own
# packages only; nothing from other suites touches the system).
set -euo pipefail
source "$(dirname "$0")/common.sh"

pkgs=(
    build-essential pkg-config ninja-build flex bison     # QEMU build
    libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev  # QEMU libraries
    python3-venv git ca-certificates                      # Python env
    dpkg-dev xz-utils zstd cpio                           # sources, initramfs
    gpgv debian-archive-keyring                           # pyctl.debian lock
    valgrind                                              # callgrind benchmarks
    bc libelf-dev libssl-dev rsync                        # lab kernels (build-kernel.sh)
    gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross     # ppc64le kernel + static selftests
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    step "host packages: all present"
    exit 0
fi
step "host packages: installing ${missing[*]}"
# The machine may carry third-party sources that fail to refresh; what we need
# is Debian's, so a partial refresh is only a warning here and the install
# below is the real check.
as_root apt-get update -q || echo "warning: apt-get update reported errors (continuing)" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]} (re-run once the package mirror answers)"
