#!/usr/bin/env bash
# Build (or reuse) the guest images: Debian kernel + initramfs with the NVMe
# modules, busybox and the agent (guest/agent/init).  Inputs are pinned in
# versions.env; an image is rebuilt only when an input changes.  With
# --kernel lab: the lab kernel (scripts/build-kernel.sh, built first if
# needed), no modules, plus the iommufd selftests.
#
#   scripts/build-guest.sh all | ppc64le | x86_64 [--module NAME ...] [--kernel debian|lab]
#
# Progress goes to stdout as ">> ..." lines, then a JSON manifest of the images
# (kernel, initrd, release, modules) under $IOMMULAB_CACHE/guest/images/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
[ $# -gt 0 ] || set -- all
cd "$IOMMULAB_REPO"
exec "$IOMMULAB_VENV/bin/python" -m pyctl.guest build "$@"
