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

key=$(printf '%s %s' "$QEMU_SYSTEM_DATA_VERSION" "$SEABIOS_VERSION" | tr ':~' '__' | tr ' ' '-')
root="$IOMMULAB_CACHE/firmware/$key"
required=(usr/share/qemu/slof.bin usr/share/qemu/vof.bin usr/share/qemu/skiboot.lid
          usr/share/qemu/qboot.rom usr/share/qemu/linuxboot_dma.bin
          usr/share/seabios/bios-256k.bin)
if [ -f "$root/.iommulab-extracted" ]; then
    echo "$root"
    exit 0
fi
dl="$IOMMULAB_CACHE/firmware/download"
step "firmware: downloading qemu-system-data=$QEMU_SYSTEM_DATA_VERSION seabios=$SEABIOS_VERSION"
# Each .deb is checked against its hash pinned in scripts/debian.lock.
debs=()
for spec in "qemu-system-data=$QEMU_SYSTEM_DATA_VERSION" "seabios=$SEABIOS_VERSION"; do
    deb=$(debian_fetch "${spec%%=*}" all "${spec#*=}" "$dl") \
        || die "could not download $spec; if Debian dropped the pinned version, update scripts/versions.env and run 'python3 -m pyctl.debian lock', else re-run"
    debs+=("$deb")
done
rm -rf "$root.tmp"
mkdir -p "$root.tmp"
for deb in "${debs[@]}"; do
    dpkg-deb -x "$deb" "$root.tmp" || die "could not extract $deb (remove it and re-run)"
done
for f in "${required[@]}"; do
    [ -e "$root.tmp/$f" ] || die "firmware file $f missing from the extracted packages"
done
touch "$root.tmp/.iommulab-extracted"
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$root"
