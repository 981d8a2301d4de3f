#!/usr/bin/env bash
# Build qemu-system-ppc64 and qemu-system-x86_64 from Debian's QEMU source
# with the project's patch series (hw/qemu-patches) and devices (hw/iommulab).
#
#   cache/qemu-src/<ver>   pristine, verified Debian source (fetch-qemu.sh)
#   cache/qemu-tree        a copy with the patches applied, hw/iommulab and its
#                          QAPI modules (hw/iommulab/*.json) linked in
#   cache/qemu-build       the build directory (incremental across runs)
#
# Prints the build directory on stdout.  Progress and logs go to stderr.
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$IOMMULAB_REPO/scripts/versions.env"

# One build at a time: a second run waits here (tests and people share it).
mkdir -p "$IOMMULAB_CACHE"
exec 9> "$IOMMULAB_CACHE/qemu-build.lock"
if ! flock -n 9; then
    echo ">> qemu: another build is running, waiting for it" >&2
    flock 9
fi

src=$("$IOMMULAB_REPO/scripts/fetch-qemu.sh")
firmware=$("$IOMMULAB_REPO/scripts/fetch-firmware.sh")
tree="$IOMMULAB_CACHE/qemu-tree"
build="$IOMMULAB_CACHE/qemu-build"
logs="$IOMMULAB_CACHE/logs"
mkdir -p "$logs"

# 1. The patched tree, redone whenever the source or a patch changes.  The
#    stamp is written last, so an interrupted copy or patch is never used.
patches=("$IOMMULAB_REPO"/hw/qemu-patches/*.patch)
tree_key=$( { echo "$src"; cat "${patches[@]}"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$tree/.iommulab-tree" 2>/dev/null)" != "$tree_key" ]; then
    step "qemu: preparing patched tree ($(basename "$src"), ${#patches[@]} patches)"
    rm -rf "$tree.new"
    cp -a "$src" "$tree.new"   # keeps the source's mtimes: unpatched files stay built
    for p in "${patches[@]}"; do
        echo "   applying $(basename "$p")" >&2
        patch -d "$tree.new" -p1 --batch --forward --quiet < "$p" \
            || die "patch $(basename "$p") does not apply to $(basename "$src")"
    done
    # Files touched by the new series or by the previous one get a fresh
    # mtime, so ninja rebuilds what depends on them, also when a patch was
    # dropped and a file went back to its (old-mtime) pristine content.
    sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "${patches[@]}" | sort -u \
        > "$tree.new/.iommulab-patched-files"
    # (a tree made before this list existed has none: then only the new one)
    { cat "$tree.new/.iommulab-patched-files"
      cat "$tree/.iommulab-patched-files" 2>/dev/null || true; } | sort -u |
        while read -r f; do
            if [ -e "$tree.new/$f" ]; then touch "$tree.new/$f"; fi
        done
    echo "$tree_key" > "$tree.new/.iommulab-tree"
    rm -rf "$tree"
    mv "$tree.new" "$tree"
fi
# The overlay: links, so that editing hw/iommulab in the repo is seen by
# ninja at once (incremental rebuilds) and a fresh clone simply re-points them.
ln -sfn "$IOMMULAB_REPO/hw/iommulab" "$tree/hw/iommulab"
for schema in "$IOMMULAB_REPO"/hw/iommulab/*.json; do
    ln -sfn "$schema" "$tree/qapi/$(basename "$schema")"
done

# 2. Configure, redone (from scratch) when the arguments change.  QEMU's
#    configure gets a Python of its own in the cache (meson, pinned), not the
#    repository's .venv: its path must not change with every fresh clone.
meson_version=$(sed -n 's/.*"meson==\([0-9.]*\)".*/\1/p' "$IOMMULAB_REPO/pyproject.toml")
[ -n "$meson_version" ] || die "no meson==X pin found in pyproject.toml"
qemu_py="$IOMMULAB_CACHE/qemu-python-$meson_version"
if [ ! -f "$qemu_py/.iommulab-ready" ]; then
    step "qemu: Python for configure (meson $meson_version) in $qemu_py"
    rm -rf "$qemu_py"
    python3 -m venv "$qemu_py"
    PIP_CACHE_DIR="$IOMMULAB_CACHE/pip" "$qemu_py/bin/pip" install -q "meson==$meson_version" \
        || die "pip could not install meson $meson_version (re-run when PyPI answers)"
    touch "$qemu_py/.iommulab-ready"
fi

cfg=(
    --target-list=ppc64-softmmu,x86_64-softmmu
    --without-default-features   # only what is asked for below
    --enable-system --disable-user --disable-tools --disable-docs
    --enable-tcg --enable-fdt=system --disable-download
    --disable-install-blobs      # the +ds source has no blobs: Debian's packages do
    --enable-trace-backends=log
    --python="$qemu_py/bin/python3"
    --firmwarepath="$firmware/usr/share/qemu:$firmware/usr/share/seabios"
)
# A changed tree needs no reconfigure: ninja re-runs meson by itself when a
# build file changed, and rebuilds only what the changed files feed.
cfg_key=$(printf '%s\n' "${cfg[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$build/.iommulab-configured" 2>/dev/null)" != "$cfg_key" ]; then
    step "qemu: configuring (log: $logs/qemu-configure.log)"
    rm -rf "$build"
    mkdir -p "$build"
    if ! (cd "$build" && "$tree/configure" "${cfg[@]}") > "$logs/qemu-configure.log" 2>&1; then
        tail -n 30 "$logs/qemu-configure.log" >&2
        rm -rf "$build"
        die "QEMU configure failed; full log in $logs/qemu-configure.log"
    fi
    echo "$cfg_key" > "$build/.iommulab-configured"
fi

# 3. Build (ninja is incremental; an interrupted build resumes correctly).
targets=(qemu-system-ppc64 qemu-system-x86_64 "$@")
step "qemu: building ${targets[*]} (log: $logs/qemu-build.log)"
start=$(date +%s)
NINJA_STATUS='[%f/%t] ' ninja -C "$build" "${targets[@]}" > "$logs/qemu-build.log" 2>&1 &
pid=$!
next=15
while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ $(( $(date +%s) - start )) -ge $next ]; then
        next=$(( next + 15 ))
        last=$(grep -ao '^\[[0-9]*/[0-9]*\]' "$logs/qemu-build.log" | tail -n 1)
        echo "   ${last:-[starting]} $(( $(date +%s) - start ))s" >&2
    fi
done
if ! wait "$pid"; then
    grep -B2 -A12 -m3 -E 'FAILED|error:' "$logs/qemu-build.log" >&2 || tail -n 40 "$logs/qemu-build.log" >&2
    die "QEMU build failed; full log in $logs/qemu-build.log"
fi
echo "   done in $(( $(date +%s) - start ))s" >&2

# 4. Run from the build tree, QEMU resolves its configured paths inside
#    qemu-bundle/ next to the binary; mirror the firmware path there.
bundle_fw="$build/qemu-bundle$firmware"
if [ ! -e "$bundle_fw" ]; then
    mkdir -p "$(dirname "$bundle_fw")"
    ln -sfn "$firmware" "$bundle_fw"
fi
echo "$build"
