#!/usr/bin/env bash
# Set up, build, and run every test: unit and integration (real QEMU pairs under TCG) in a
# -Werror build, then all of them again under ASan+UBSan.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
bash "$ROOT/scripts/check-banned.sh"
vmig_build build-asan -DVMIG_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

status=0
for dir in build build-asan; do
    echo "== tests in $dir"
    (cd "$ROOT/$dir" && ctest --output-on-failure) || status=1
done
exit $status
