# Shared helpers for the set-up scripts (sourced, not run).
: "${IOMMULAB_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/iommulab}"
IOMMULAB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IOMMULAB_VENV="${IOMMULAB_VENV:-$IOMMULAB_REPO/.venv}"
export IOMMULAB_CACHE IOMMULAB_REPO IOMMULAB_VENV

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run as root, or through sudo when there is one.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# debian_fetch NAME ARCH VERSION DIR: a file pinned in scripts/debian.lock,
# downloaded into DIR and checked (standard-library Python, no venv needed).
debian_fetch() {
    PYTHONPATH="$IOMMULAB_REPO" python3 -m pyctl.debian fetch "$@"
}
