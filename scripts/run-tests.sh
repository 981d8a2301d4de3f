#!/usr/bin/env bash
# Run every test of the project, setting up whatever is missing first
# (Debian packages, the venv, QEMU source + build, firmware, lab kernels,
# guest images).
#
#   scripts/run-tests.sh            everything
#   IOMMULAB_SKIP_BOOT=1 ...        everything but the avocado boot tests
#
# Reports land in results/ (JUnit XML per suite, avocado job logs with the
# guests' console logs).  The last line sums all suites.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$IOMMULAB_REPO"
results="$IOMMULAB_REPO/results"
rm -rf "$results"
mkdir -p "$results"
venv="$IOMMULAB_VENV/bin"
t0=$(date +%s)

bash scripts/setup-host.sh
bash scripts/setup-python.sh
qemu_build=$(bash scripts/build-qemu.sh)
export IOMMULAB_QEMU_BUILD="$qemu_build"
bash scripts/build-guest.sh all >/dev/null
# The lab kernels (from Debian's linux source, iommufd built in) and their
# images: built once into the cache, a no-op when up to date.
for arch in x86_64 ppc64le; do bash scripts/build-kernel.sh "$arch" >/dev/null; done
# The ppc64 iommufd RFC's flavour (seeded from the lab ppc64le build: ~1 min).
bash guest/kernel-patches/ppc64-iommufd-rfc/build.sh ppc64le >/dev/null
bash scripts/build-guest.sh all --kernel lab >/dev/null

failed_stages=()
run_stage() {   # run_stage NAME CMD...: run, remember a failure, go on
    local name=$1
    shift
    step "$name"
    if ! "$@"; then
        failed_stages+=("$name")
    fi
}

lint() {
    "$venv/ruff" check pyctl tests scripts && \
    "$venv/ruff" format --check pyctl tests scripts && \
    "$venv/mypy"
}
run_stage "lint: ruff + mypy" lint

core_tests() {
    [ -f build/build.ninja ] || "$venv/meson" setup build >/dev/null
    "$venv/meson" test -C build --print-errorlogs
}
run_stage "core: meson unit tests" core_tests

run_stage "qemu: QEMU's own tests of the patched code (QMP, chardev)" \
    bash scripts/qemu-own-tests.sh

run_stage "pytest: control plane, device and fuzz tests" \
    "$venv/pytest" -q tests/pyctl tests/device tests/fuzz --junitxml="$results/pytest.xml"

reports=(build/meson-logs/testlog.junit.xml "$results/pytest.xml")
if [ -z "${IOMMULAB_SKIP_BOOT:-}" ]; then
    run_stage "avocado: guest boot tests" \
        "$venv/avocado" run --job-results-dir "$results/avocado" \
        --xunit "$results/avocado.xml" --max-parallel-tasks 1 tests/boot/
    reports+=("$results/avocado.xml")
fi

step "summary ($(( $(date +%s) - t0 ))s)"
rc=0
"$venv/python" scripts/junit-summary.py "${reports[@]}" || rc=$?
if [ ${#failed_stages[@]} -ne 0 ]; then
    echo "failed stages: ${failed_stages[*]}"
    rc=1
fi
exit $rc
