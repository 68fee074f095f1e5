#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) into build-fuzz/ and runs each for SECONDS
# (default 60), starting from the checked-in seeds, tests/data/, ../shared/cpudata and
# tests/fuzz/regressions/ (inputs that once failed, replayed first).  New inputs go to a
# scratch corpus, not into the tree.  Exits non-zero on any crash, leak or
# timeout; prints each target's executions.  Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# With VMIG_FUZZ_COVERAGE=1 (scripts/fuzz-cover.sh) it builds into build-fuzz-cov/ with clang's
# source-based coverage as well, and each target writes build-fuzz-cov/coverage/TARGET.profraw.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(qmp_parser qmp_conn spec cpuid replies wire handshake control jobfile storage)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
command -v clang >/dev/null || need+=(clang)
[ -n "$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a 2>/dev/null)" ] ||
    need+=(libclang-rt-14-dev)
if ((${#need[@]})); then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi

BUILD="$ROOT/build-fuzz" COVERAGE=OFF
if [ -n "${VMIG_FUZZ_COVERAGE:-}" ]; then BUILD="$ROOT/build-fuzz-cov" COVERAGE=ON; fi
CC=clang cmake -S "$ROOT" -B "$BUILD" -G Ninja -DVMIG_FUZZ=ON -DVMIG_SANITIZE=ON \
    -DVMIG_FUZZ_COVERAGE=$COVERAGE -DVMIG_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" --target "${TARGETS[@]/#/fuzz_}" >/dev/null

seeds_for() {
    local s="$ROOT/tests/fuzz/seeds"
    case "$1" in
    qmp_parser | qmp_conn) echo "$s/qmp" ;;
    spec) echo "$s/spec" ;;
    cpuid) echo "$s/cpuid $ROOT/tests/data/cpuid $ROOT/tests/fuzz/regressions/cpuid" \
        "$(ls -d "$ROOT"/../shared/cpudata/*/ 2>/dev/null | tr '\n' ' ')" ;;
    replies) echo "$s/replies $(find "$ROOT/tests/data/qmp" -type d | tr '\n' ' ')" ;;
    wire | handshake) echo "$s/wire" ;;
    control) echo "$s/control" ;;
    jobfile) echo "$s/jobfile $ROOT/tests/fuzz/regressions/jobfile" ;;
    storage) echo "$s/storage" ;;
    esac
}

status=0
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
for t in "${TARGETS[@]}"; do
    work=$(mktemp -d "/tmp/vmig-fuzz-$t-XXXXXX")
    if [ "$COVERAGE" = ON ]; then
        mkdir -p "$BUILD/coverage"
        export LLVM_PROFILE_FILE="$BUILD/coverage/$t.profraw"
    fi
    # shellcheck disable=SC2046
    if "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_EACH" -max_len=65536 \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/" \
        "$work" $(seeds_for "$t") >"$work/log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
        cov=$(grep -o 'cov: [0-9]*' "$work/log" | tail -n1)
        echo "fuzz_$t: ${runs:-?} executions in ${SECONDS_EACH} s, $cov, no crash"
        rm -rf "$work"
    else
        echo "fuzz_$t: FAILED; log and reproducer in $work" >&2
        grep -E "ERROR|SUMMARY|Test unit written" "$work/log" | head -n 20 >&2 || true
        status=1
    fi
done
exit $status
