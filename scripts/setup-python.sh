#!/usr/bin/env bash
# Create the project venv (.venv) and install pyctl with its test tools.
# Re-runs are cheap: pip is only called when pyproject.toml changed.
set -euo pipefail
source "$(dirname "$0")/common.sh"

stamp="$IOMMULAB_VENV/.iommulab-installed"
want=$(sha256sum "$IOMMULAB_REPO/pyproject.toml" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$IOMMULAB_VENV/bin/python" ]; then
    step "python: venv up to date ($IOMMULAB_VENV)"
    exit 0
fi
py=$(command -v python3) || die "python3 not found"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 >= 3.11 is needed ($py is older)"
step "python: creating venv $IOMMULAB_VENV"
rm -rf "$IOMMULAB_VENV"
"$py" -m venv "$IOMMULAB_VENV"
export PIP_CACHE_DIR="$IOMMULAB_CACHE/pip"
"$IOMMULAB_VENV/bin/pip" install -q --upgrade pip
"$IOMMULAB_VENV/bin/pip" install --progress-bar off -e "$IOMMULAB_REPO[test]" \
    || die "pip install failed (re-run when PyPI answers)"
echo "$want" > "$stamp"
