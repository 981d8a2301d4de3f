#!/usr/bin/env bash
# QEMU's own tests of the code the project's patches touch (hw/qemu-patches):
# the QMP monitor and its JSON input (0017, 0019), char devices (0017's
# has_msgfds), and qmp-cmd-test, which runs every command of the schema,
# the lab's included, on both targets (0015).  Builds what is missing, runs
# each test, prints one line per test and a TAP count; fails on any failure.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$IOMMULAB_REPO"
unit=(check-qjson check-qobject test-qmp-cmds test-qmp-event test-char)
qtests=(qmp-test qmp-cmd-test)
build=$(bash scripts/build-qemu.sh "${unit[@]/#/tests/unit/}" "${qtests[@]/#/tests/qtest/}")
logs=$IOMMULAB_CACHE/logs/qemu-own-tests
mkdir -p "$logs"
pass=0 fail=0 failed=()
run() {   # run NAME CMD...: TAP output to the log, counted
    local name=$1 log="$logs/$1.log"
    shift
    if "$@" > "$log" 2>&1; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        failed+=("$name")
        tail -n 20 "$log" >&2
    fi
    echo "   $name: $(grep -c '^ok ' "$log") ok, $(grep -c '^not ok ' "$log") not ok" >&2
}
for t in "${unit[@]}"; do
    run "$t" "$build/tests/unit/$t" --tap
done
for arch in x86_64 ppc64; do
    for t in "${qtests[@]}"; do
        QTEST_QEMU_BINARY="$build/qemu-system-$arch" run "$t-$arch" "$build/tests/qtest/$t" --tap
    done
done
echo "qemu's own tests: $pass passed, $fail failed${failed:+ (${failed[*]})}; logs in $logs"
[ "$fail" -eq 0 ]
