#!/usr/bin/env bash
# Coverage of the libFuzzer targets, per function.  Runs scripts/fuzz.sh with
# VMIG_FUZZ_COVERAGE=1: the targets are built with clang's source-based coverage (as well as
# ASan+UBSan) into build-fuzz-cov/ and each runs for SECONDS (default 60) from fuzz.sh's seeds,
# with its options and checks.  Then it merges each target's profile (llvm-profdata-14) and
# prints (llvm-cov-14), for every function tests/fuzz/targets.txt says the target must reach,
# its line and region coverage, how often it ran and the target's executions; then a summary of
# the files each target names, alone and with all targets together.  Fails when a target fails
# (crash, leak, timeout), targets.txt lists nothing for it, or a listed function has no executed
# line.  Full reports, text and html: build-fuzz-cov/coverage/.
# Usage: scripts/fuzz-cover.sh [SECONDS] [TARGET...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-60}"
shift || true
LIST="$ROOT/tests/fuzz/targets.txt"
TARGETS=("$@") # none: the ones fuzz.sh runs by default
OUT="$ROOT/build-fuzz-cov/coverage"
BIN="$ROOT/build-fuzz-cov/tests/fuzz"
PROFDATA=llvm-profdata-14 LLVMCOV=llvm-cov-14

if ! command -v $PROFDATA >/dev/null || ! command -v $LLVMCOV >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        llvm-14 >/dev/null
fi

rm -rf "$OUT"
mkdir -p "$OUT"
status=0
VMIG_FUZZ_COVERAGE=1 bash "$ROOT/scripts/fuzz.sh" "$SECONDS_EACH" "${TARGETS[@]}" |
    tee "$OUT/fuzz.log" || status=1
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(sed -n 's/^fuzz_\([a-z0-9_]*\): .*/\1/p' "$OUT/fuzz.log")
fi

# Whether llvm-cov's path names FILE of targets.txt (llvm-cov shortens or keeps the full path).
SAME='function same(p, f) { return p == f || substr(p, length(p) - length(f)) == "/" f }'

# From TARGET's llvm-cov function report and llvm-profdata counts, a row per function listed
# for it: target, function, file, lines, regions, calls, executions, and "ok" or what is wrong.
rows() {
    awk -v t="$1" -v execs="$2" -v list="$LIST" -v counts="$3" "$SAME"'
        FILENAME == list && $1 == t { for (i = 3; i <= NF; i++) want[++n] = $2 " " $i; next }
        FILENAME == list { next }
        FILENAME == counts && /^  [^ ].*:$/ { name = substr($1, 1, length($1) - 1); next }
        FILENAME == counts && /Function count:/ { calls[name] = $3; next }
        FILENAME == counts { next }
        /^File / { file = $2; gsub(/^'\''|'\'':$/, "", file); next }
        NF >= 7 && $2 ~ /^[0-9]+$/ && file != "" {
            fn = $1; sub(/^[^:]*:/, "", fn)
            k = file SUBSEP fn
            found[k] = 1; reg[k] = $2; rmiss[k] = $3; lin[k] = $5; lmiss[k] = $6
        }
        function pct(miss, all) { return all ? sprintf("%.1f%%", 100 * (all - miss) / all) : "-" }
        END {
            for (i = 1; i <= n; i++) {
                split(want[i], w, " "); f = w[1]; fn = w[2]; k = ""
                for (key in found) {
                    split(key, p, SUBSEP)
                    if (p[2] == fn && same(p[1], f)) k = key
                }
                base = f; sub(/.*\//, "", base)
                c = (base ":" fn) in calls ? calls[base ":" fn] : (fn in calls ? calls[fn] : 0)
                if (k == "") {
                    printf "%s\t%s\t%s\t-\t-\t-\t%s\tMISSING\n", t, fn, f, execs
                    continue
                }
                lines = sprintf("%s %d/%d", pct(lmiss[k], lin[k]), lin[k] - lmiss[k], lin[k])
                regions = sprintf("%s %d/%d", pct(rmiss[k], reg[k]), reg[k] - rmiss[k], reg[k])
                why = lin[k] - lmiss[k] > 0 ? "ok" : "NOT REACHED"
                printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t, fn, f, lines, regions, c, execs, why
            }
        }' "$LIST" "$3" "$4"
}

# The rows of an llvm-cov file report (FILE) for the files TARGET names (all targets: "*").
file_rows() {
    awk -v t="$1" -v list="$LIST" "$SAME"'
        FILENAME == list && !/^#/ && NF && (t == "*" || $1 == t) { want[$2] = 1; next }
        FILENAME == list { next }
        NF >= 13 && $2 ~ /^[0-9]+$/ {
            for (f in want) {
                if (!same($1, f)) {
                    continue
                }
                printf "%s\t%s\t%d/%d\t%s %d/%d\t%s\t%s\n", t, f, $5 - $6, $5, $10, $8 - $9, $8,
                    $4, $13
            }
        }' "$LIST" "$2"
}

table() {
    column -t -s $'\t' -o '  ' -N "$1"
}

: >"$OUT/functions.tsv"
: >"$OUT/files.tsv"
total=0
objects=()
for t in "${TARGETS[@]}"; do
    execs=$(sed -n "s/^fuzz_$t: \([0-9]*\) executions.*/\1/p" "$OUT/fuzz.log")
    if [ ! -s "$OUT/$t.profraw" ] || [ -z "$execs" ]; then
        echo "fuzz_$t: no profile or no executions: the run failed (see above)" >&2
        status=1
        continue
    fi
    total=$((total + execs))
    if ! awk -v t="$t" '$1 == t { found = 1 } END { exit !found }' "$LIST"; then
        echo "fuzz_$t: tests/fuzz/targets.txt lists nothing it must reach" >&2
        status=1
    fi
    objects+=(-object "$BIN/fuzz_$t")
    prof="$OUT/$t.profdata"
    $PROFDATA merge -sparse "$OUT/$t.profraw" -o "$prof"
    $PROFDATA show -all-functions "$prof" >"$OUT/$t.counts.txt"
    mapfile -t files < <(awk -v t="$t" -v root="$ROOT" \
        '$1 == t && !seen[$2]++ { print root "/" $2 }' "$LIST")
    $LLVMCOV report -show-functions -instr-profile="$prof" "$BIN/fuzz_$t" "${files[@]}" \
        >"$OUT/$t.functions.txt"
    $LLVMCOV report -instr-profile="$prof" "$BIN/fuzz_$t" >"$OUT/$t.files.txt"
    $LLVMCOV show -format=text -output-dir="$OUT/$t" -instr-profile="$prof" "$BIN/fuzz_$t"
    $LLVMCOV show -format=html -output-dir="$OUT/html/$t" -instr-profile="$prof" "$BIN/fuzz_$t"
    rows "$t" "$execs" "$OUT/$t.counts.txt" "$OUT/$t.functions.txt" >>"$OUT/functions.tsv"
    file_rows "$t" "$OUT/$t.files.txt" >>"$OUT/files.tsv"
done
if ((${#objects[@]})); then
    $PROFDATA merge -sparse "$OUT"/*.profraw -o "$OUT/all.profdata"
    $LLVMCOV report -instr-profile="$OUT/all.profdata" "${objects[@]:1}" >"$OUT/all.files.txt"
    file_rows "*" "$OUT/all.files.txt" | sort -u -t $'\t' -k2,2 | sed 's/^\*/all/' \
        >>"$OUT/files.tsv"
fi

echo
echo "== functions each target must reach (tests/fuzz/targets.txt)"
table TARGET,FUNCTION,FILE,LINES,REGIONS,CALLS,EXECUTIONS,STATUS <"$OUT/functions.tsv" |
    tee "$OUT/functions.txt"
echo
echo "== the files each target names"
table TARGET,FILE,FUNCTIONS,LINES,REGIONS,BRANCHES <"$OUT/files.tsv" | tee "$OUT/files.txt"
echo
printf 'executions: %s in all, %s s a target (%s)\n' "$total" "$SECONDS_EACH" \
    "$(sed -n 's/^fuzz_\([a-z0-9_]*\): \([0-9]*\) executions.*/\1 \2/p' "$OUT/fuzz.log" |
        paste -sd, - | sed 's/,/, /g')"
unreached=$(awk -F'\t' '$8 != "ok"' "$OUT/functions.tsv")
if [ -n "$unreached" ]; then
    echo "not reached:" >&2
    echo "$unreached" | cut -f1-3,8 | sed 's/^/  /' >&2
    status=1
fi
echo "full reports: $OUT/"
exit $status
