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
    cp -a "$src" "$tree.new"
    for p in "${patches[@]}"; do
        echo "   applying $(basename "$p")" >&2
        patch -d "$tree.new" -p1 --batch --forward --quiet < "$p" \
            || die "patch $(basename "$p") does not apply to $(basename "$src")"
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

# 2. Configure, redone when the arguments or the tree change.
cfg=(
    --target-list=ppc64-softmmu,x86_64-softmmu
    --without-default-features   # only what is asked for below
    --enable-system --disable-user --disable-tools --disable-docs
    --enable-tcg --enable-fdt=system --disable-download
    --disable-install-blobs      # the +ds source has no blobs: Debian's packages do
    --enable-trace-backends=log
    --python="$IOMMULAB_VENV/bin/python"
    --firmwarepath="$firmware/usr/share/qemu:$firmware/usr/share/seabios"
)
cfg_key=$( { echo "$tree_key"; printf '%s\n' "${cfg[@]}"; } | sha256sum | cut -d' ' -f1)
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
