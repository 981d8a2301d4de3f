#!/usr/bin/env bash
# The main job: set up everything that is missing, then boot the default
# guest with its NVMe disk behind the vIOMMU, the domains scripted through
# the pyctl control plane over QMP.  Extra arguments go to `iommulab demo`
# (see `iommulab demo --help`).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$IOMMULAB_REPO"
bash scripts/setup-host.sh
bash scripts/setup-python.sh
IOMMULAB_QEMU_BUILD=$(bash scripts/build-qemu.sh)
export IOMMULAB_QEMU_BUILD
bash scripts/build-guest.sh all >/dev/null
exec "$IOMMULAB_VENV/bin/iommulab" demo "$@"
