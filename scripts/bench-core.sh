#!/usr/bin/env bash
# Microbenchmark of the translation core (no QEMU needed):
#   - translations per second for an IOTLB hit, a 4-level stage-2 walk and a
#     nested 4+4 walk (native run, ns and M/s);
#   - instructions per translation under callgrind: the difference between
#     two runs of N1 and N2 translations, divided by N2 - N1, so setup costs
#     cancel out (the benchmark loop's own few instructions are included);
#   - instructions per control operation under callgrind (unmap of one 4 KiB
#     range with the IOTLB empty, full of another domain's entries, or with
#     one entry of its own; a 512-range unmap batch; invalidation of a
#     domain): only the operation's function is counted (--toggle-collect),
#     divided by the number of calls.
# Usage: scripts/bench-core.sh [build-dir]   (default: build)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
meson=$repo/.venv/bin/meson
[ -d "$build" ] || "$meson" setup "$build" "$repo" >/dev/null
"$meson" compile -C "$build" tests/core/bench-core >/dev/null
bench=$build/tests/core/bench-core
n1=100000
n2=300000

ir() {   # total instructions of one callgrind run
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bench" "$1" "$2" \
        >/dev/null 2>&1
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
    rm -f "$out"
}

echo "== iommulab core microbenchmark ($(date -u +%FT%TZ), $(uname -m))"
for mode in hit s2walk nested; do
    "$bench" "$mode" 20000000 | sed 's/^/native  /'
done
if ! command -v valgrind >/dev/null; then
    echo "valgrind not installed: no instruction counts" >&2
    exit 0
fi
for mode in hit s2walk nested; do
    a=$(ir "$mode" $n1)
    b=$(ir "$mode" $n2)
    echo "callgrind $mode: $(( (b - a) / (n2 - n1) )) instructions per translation"
done

ctl() {  # instructions per call of function $1 in mode $2, $3 calls
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        --collect-atstart=no --toggle-collect="$1" "$bench" "$2" "$3" \
        >/dev/null 2>&1
    awk -v n="$3" '/^(summary|totals):/ { printf "%d", $2 / n; exit }' "$out"
    rm -f "$out"
}

for spec in "unmap-empty il_domain_unmap 2000" \
            "unmap-full il_domain_unmap 2000" \
            "unmap-own1 il_domain_unmap 2000" \
            "batch512 il_domain_unmap 20" \
            "inv-domain il_invalidate_domain 2000" \
            "inv-empty il_invalidate_domain 2000"; do
    set -- $spec
    echo "callgrind $1: $(ctl "$2" "$1" "$3") instructions per $2 call"
done
