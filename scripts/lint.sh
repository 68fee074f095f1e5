#!/usr/bin/env bash
# Static checks over every C file git tracks, like libvirt's syntax-check: clang-format
# (.clang-format; generated files, marked "do not edit" on their first line, are left out),
# clang-tidy (.clang-tidy, every warning an error) and cppcheck (warning, performance,
# portability; scripts/cppcheck.cfg).  Installs the three from Debian's packages when missing
# (as root, or through sudo); configures build-lint/ for its compile_commands.json, building
# nothing (the build's own dependencies, which scripts/setup.sh installs, must be there).
# Prints a summary line per tool (then its findings) and exits non-zero on any finding.  Run
# by scripts/test.sh; VMIG_LINT_JOBS sets how many clang-tidy processes run at once (nproc).
# Usage: scripts/lint.sh [format] [tidy] [cppcheck]   (default: all three)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS=("$@")
[ ${#TOOLS[@]} -gt 0 ] || TOOLS=(format tidy cppcheck)
# Pinned: another version formats differently.  14 is Debian 12's, as clang is (scripts/fuzz.sh).
LLVM=14
CLANG_FORMAT=clang-format-$LLVM
CLANG_TIDY=clang-tidy-$LLVM
JOBS=${VMIG_LINT_JOBS:-$(nproc)}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
command -v "$CLANG_FORMAT" >/dev/null || need+=("$CLANG_FORMAT")
command -v "$CLANG_TIDY" >/dev/null || need+=("$CLANG_TIDY")
command -v cppcheck >/dev/null || need+=(cppcheck)
command -v python3 >/dev/null || need+=(python3) # filters compile_commands.json
if ((${#need[@]})); then
    echo "lint: installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi

LOG="$ROOT/build-lint/lint"
mkdir -p "$LOG"
# What git tracks (and is there): every .c and .h, and which of them are generated.
mapfile -t ALL < <(git ls-files -- '*.c' '*.h' | while read -r f; do [ -f "$f" ] && echo "$f"; done)
mapfile -t SOURCES < <(for f in "${ALL[@]}"; do
    head -n1 "$f" | grep -qi 'do not edit' || echo "$f"
done)
status=0

run_format() {
    local out="$LOG/clang-format.txt" bad=()
    "$CLANG_FORMAT" --dry-run --Werror "${SOURCES[@]}" >"$out" 2>&1 || true
    mapfile -t bad < <(grep -oE '^[^:]+:[0-9]+:[0-9]+: error: code should be clang-formatted' \
                       "$out" | cut -d: -f1 | sort -u)
    if ((${#bad[@]})); then
        echo "clang-format: ${#bad[@]} of ${#SOURCES[@]} files differ from .clang-format" \
            "($(grep -c 'error: code should be' "$out") places; $CLANG_FORMAT -i FILE fixes them):"
        printf '  %s\n' "${bad[@]}"
        status=1
    elif grep -q 'error' "$out"; then
        cat "$out" >&2
        echo "clang-format: FAILED to run"
        status=1
    else
        echo "clang-format: ${#SOURCES[@]} files, all formatted"
    fi
}

# build-lint/compile_commands.json (fuzz targets included), less files git does not track,
# plus the freestanding test guest, which CMake builds with a custom command.
configure() {
    cmake -S "$ROOT" -B "$ROOT/build-lint" -G Ninja -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
        -DVMIG_FUZZ=ON >"$LOG/cmake.txt" 2>&1 || { cat "$LOG/cmake.txt" >&2; return 1; }
    mkdir -p "$LOG/db"
    printf '%s\n' "${ALL[@]}" | python3 -c '
import json, sys
root, tracked = sys.argv[1], set(l.strip() for l in sys.stdin)
db = [e for e in json.load(open(root + "/build-lint/compile_commands.json"))
      if e["file"].startswith(root + "/") and e["file"][len(root) + 1:] in tracked]
if "guest/guest.c" in tracked:
    db.append({"directory": root, "file": root + "/guest/guest.c",
               "command": "cc -m32 -ffreestanding -nostdlib -Wall -Wextra -I" + root
                          + "/guest -c " + root + "/guest/guest.c"})
json.dump(db, open(root + "/build-lint/lint/db/compile_commands.json", "w"), indent=1)
for e in db:
    print(e["file"])
' "$ROOT" >"$LOG/db/files.txt"
}

run_tidy() {
    local out="$LOG/clang-tidy.txt" n files
    files=$(wc -l <"$LOG/db/files.txt")
    # one process a file; findings in a header show once per file including it
    xargs -P "$JOBS" -n 1 "$CLANG_TIDY" -p "$LOG/db" --quiet --warnings-as-errors='*' \
        <"$LOG/db/files.txt" >"$out" 2>&1 || true
    # (no finding: grep fails, which pipefail and set -e would make the script's exit)
    n=$({ grep -E '^/[^ ]+:[0-9]+:[0-9]+: (warning|error): ' "$out" || true; } | sort -u |
        tee "$out.findings" | wc -l)
    if [ "$n" -gt 0 ]; then
        echo "clang-tidy: $n findings in $(cut -d: -f1 "$out.findings" | sort -u | wc -l) files" \
            "($files checked; all output in ${out#"$ROOT"/}):"
        sed "s#^$ROOT/#  #" "$out.findings"
        status=1
    elif grep -qE 'error|Error' "$out"; then
        cat "$out" >&2
        echo "clang-tidy: FAILED to run"
        status=1
    else
        echo "clang-tidy: $files files, no finding"
    fi
}

run_cppcheck() {
    local out="$LOG/cppcheck.txt" files rc=0
    files=$(wc -l <"$LOG/db/files.txt")
    # gnu.cfg is left out: it wrongly wants accept4()'s addrlen non-NULL.  memleak: cppcheck
    # does not model __attribute__((cleanup)), so every g_autofree reads as a leak (LSan checks
    # leaks in the unit and fuzz runs).  readdirCalled: readdir_r() is the deprecated one.
    cppcheck --project="$LOG/db/compile_commands.json" --library=posix --library=gtk \
        --library="$ROOT/scripts/cppcheck.cfg" --enable=warning,performance,portability \
        --error-exitcode=1 --inline-suppr --suppress=missingIncludeSystem --suppress=memleak \
        --suppress=readdirCalled -j "$JOBS" --quiet \
        --template='{file}:{line}: {severity}: {id}: {message}' >"$out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] || [ -s "$out" ]; then
        echo "cppcheck: $(grep -c . "$out") findings ($files files checked):"
        sed "s#^$ROOT/##; s/^/  /" "$out"
        status=1
    else
        echo "cppcheck: $files files, no finding"
    fi
}

configure_once() {
    if [ -z "${configured:-}" ]; then
        configure || { echo "lint: configuring build-lint/ failed" >&2; exit 1; }
        configured=1
    fi
}

for t in "${TOOLS[@]}"; do
    case "$t" in
    format) run_format ;;
    tidy) configure_once && run_tidy ;;
    cppcheck) configure_once && run_cppcheck ;;
    *)
        echo "usage: scripts/lint.sh [format] [tidy] [cppcheck]" >&2
        exit 2
        ;;
    esac
done
exit $status
