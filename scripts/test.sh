#!/usr/bin/env bash
# Set up, build, and run every test: the static checks (scripts/lint.sh: clang-format,
# clang-tidy, cppcheck); unit and integration tests (real QEMU pairs under TCG, the fault
# matrix's 16 runs among them) in a -Werror build, then all of them again under ASan+UBSan;
# then each libFuzzer target for $VMIG_FUZZ_SECONDS (default 60) from its seeds and
# regressions (scripts/fuzz.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
bash "$ROOT/scripts/check-banned.sh"
# clang-format, clang-tidy and cppcheck: a finding fails the run, once the tests have run too.
status=0
bash "$ROOT/scripts/lint.sh" || status=1
vmig_build build-asan -DVMIG_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

for dir in build build-asan; do
    echo "== tests in $dir"
    (cd "$ROOT/$dir" && ctest --output-on-failure) || status=1
done
echo "== fuzzing, ${VMIG_FUZZ_SECONDS:-60} s a target"
bash "$ROOT/scripts/fuzz.sh" "${VMIG_FUZZ_SECONDS:-60}" || status=1
exit $status
