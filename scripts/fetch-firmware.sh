#!/usr/bin/env bash
# Firmware for the built QEMU from Debian's qemu-system-data and seabios
# (pinned in versions.env): SLOF, VOF, skiboot for ppc64; SeaBIOS, qboot and
# the linuxboot option ROM for x86.  The packages are extracted into the cache
# (not installed) and the build points --firmwarepath at them.
# Prints the firmware root on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
source "$here/versions.env"
source "$here/debian-apt.sh"

key=$(printf '%s %s' "$QEMU_SYSTEM_DATA_VERSION" "$SEABIOS_VERSION" | tr ':~' '__' | tr ' ' '-')
root="$IOMMULAB_CACHE/firmware/$key"
required=(usr/share/qemu/slof.bin usr/share/qemu/vof.bin usr/share/qemu/skiboot.lid
          usr/share/qemu/qboot.rom usr/share/qemu/linuxboot_dma.bin
          usr/share/seabios/bios-256k.bin)
if [ -f "$root/.iommulab-extracted" ]; then
    echo "$root"
    exit 0
fi
iommulab_apt_update >&2
dl="$IOMMULAB_CACHE/firmware/download"
mkdir -p "$dl"
step "firmware: downloading qemu-system-data=$QEMU_SYSTEM_DATA_VERSION seabios=$SEABIOS_VERSION"
# apt checks each .deb against the hashes in the signed index.
(cd "$dl" && iommulab_apt download "qemu-system-data=$QEMU_SYSTEM_DATA_VERSION" \
    "seabios=$SEABIOS_VERSION" >&2) \
    || die "could not download the firmware packages; if Debian dropped the pinned versions, update scripts/versions.env, else re-run"
rm -rf "$root.tmp"
mkdir -p "$root.tmp"
for deb in "$dl"/qemu-system-data_*"${QEMU_SYSTEM_DATA_VERSION#*:}"_all.deb \
           "$dl"/seabios_"${SEABIOS_VERSION#*:}"_all.deb; do
    dpkg-deb -x "$deb" "$root.tmp" || die "could not extract $deb (remove it and re-run)"
done
for f in "${required[@]}"; do
    [ -e "$root.tmp/$f" ] || die "firmware file $f missing from the extracted packages"
done
touch "$root.tmp/.iommulab-extracted"
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$root"
