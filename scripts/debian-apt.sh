#!/usr/bin/env bash
# A private apt root for Debian trixie (amd64 + ppc64el), kept in the cache.
#
# Why private: the QEMU 10.0 source, its firmware and the guest kernels come
# from trixie, and the ppc64el ones need a foreign architecture.  Adding either
# to the machine's own apt would let a later 'apt-get upgrade' pull trixie
# packages into a bookworm system.  A private root only downloads; apt still
# checks every file against the signed Release/Packages/Sources indexes.
#
# Source this file, then call iommulab_apt (apt-get) or iommulab_apt_cache.
set -euo pipefail

: "${IOMMULAB_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/iommulab}"
IOMMULAB_APT_ROOT="$IOMMULAB_CACHE/apt"
IOMMULAB_DEBIAN_MIRROR="${IOMMULAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IOMMULAB_DEBIAN_SUITE="${IOMMULAB_DEBIAN_SUITE:-trixie}"

iommulab_apt_init() {
    local r="$IOMMULAB_APT_ROOT"
    mkdir -p "$r/etc/apt/sources.list.d" "$r/etc/apt/preferences.d" \
             "$r/etc/apt/apt.conf.d" "$r/etc/apt/trusted.gpg.d" \
             "$r/state/lists/partial" "$r/cache/archives/partial"
    cat > "$r/etc/apt/sources.list" <<SRC
deb [arch=amd64,ppc64el signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $IOMMULAB_DEBIAN_MIRROR $IOMMULAB_DEBIAN_SUITE main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $IOMMULAB_DEBIAN_MIRROR $IOMMULAB_DEBIAN_SUITE main
SRC
    : > "$r/state/status"
}

# Run an apt tool (apt-get, apt-cache) against the private root.
_iommulab_apt_tool() {
    local tool=$1 r="$IOMMULAB_APT_ROOT"
    shift
    [ -f "$r/etc/apt/sources.list" ] || iommulab_apt_init
    "$tool" -q \
        -o Dir::Etc="$r/etc/apt" \
        -o Dir::Etc::SourceList="$r/etc/apt/sources.list" \
        -o Dir::Etc::SourceParts="$r/etc/apt/sources.list.d" \
        -o Dir::Etc::Preferences="$r/etc/apt/preferences" \
        -o Dir::Etc::PreferencesParts="$r/etc/apt/preferences.d" \
        -o Dir::Etc::Parts="$r/etc/apt/apt.conf.d" \
        -o Dir::State="$r/state" \
        -o Dir::State::status="$r/state/status" \
        -o Dir::Cache="$r/cache" \
        -o APT::Architecture=amd64 \
        -o APT::Architectures::=amd64 -o APT::Architectures::=ppc64el \
        -o APT::Sandbox::User=root \
        -o Acquire::Retries=3 \
        "$@"
}

iommulab_apt() { _iommulab_apt_tool apt-get "$@"; }
iommulab_apt_cache() { _iommulab_apt_tool apt-cache "$@"; }

# Refresh the indexes at most once a day (and always when missing).
iommulab_apt_update() {
    local stamp="$IOMMULAB_APT_ROOT/state/updated"
    if [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
        echo ">> apt: refreshing Debian $IOMMULAB_DEBIAN_SUITE indexes (private root $IOMMULAB_APT_ROOT)"
        if ! iommulab_apt update; then
            echo "error: apt could not refresh $IOMMULAB_DEBIAN_SUITE indexes from $IOMMULAB_DEBIAN_MIRROR;" \
                 "check the network and re-run the same command" >&2
            return 1
        fi
        touch "$stamp"
    fi
}
